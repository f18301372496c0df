"""The acceptance tests' harness: the real ``pgvisor`` CLI in subprocesses.

:class:`ServiceProcess` writes a pgvisor.toml into a directory, runs ``python -m
supervisor.cli run -c pgvisor.toml`` with its output in ``service.log`` and offers the CLI
(:meth:`cli`), the HTTP API (:meth:`get`), the handlers' report (:meth:`handled`) and
polling helpers. Every wait has a deadline; nothing sleeps blindly.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from supervisor.testing import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environ(out_dir, **extra):
    """The subprocesses' environment: the repo importable, no inherited PGVISOR_* values."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PGVISOR_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO] + ([env["PYTHONPATH"]] if "PYTHONPATH" in env else []))
    env["ACCEPTANCE_OUT"] = str(out_dir)
    env.update(extra)
    return env


def run_cli(*args, env=None, timeout=60):
    """Run ``pgvisor ARGS`` to its end: the CompletedProcess (text stdout, stderr)."""
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(toml_value(item) for item in value)
    return json.dumps(str(value))


class ServiceProcess:
    """One ``pgvisor run`` in ``directory`` with the config ``settings`` ({section: {key:
    value}}); the registry is ``directory/registry.json``, the HTTP API on a free port."""

    def __init__(self, directory, settings, env=None):
        self.directory = str(directory)
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        settings = {section: dict(table) for section, table in settings.items()}
        settings.setdefault("http", {}).setdefault("listen", "127.0.0.1:%d" % self.port)
        settings.setdefault("registry", {}).setdefault("path", "registry.json")
        self.config = os.path.join(self.directory, "pgvisor.toml")
        self.write_config(settings)
        self.registry = os.path.join(self.directory, "registry.json")
        self.log_path = os.path.join(self.directory, "service.log")
        self.env = environ(self.directory, **(env or {}))
        self.process = None
        self.token = settings.get("http", {}).get("token")

    def write_config(self, settings):
        lines = []
        for section, table in settings.items():
            lines.append("[%s]" % section)
            lines += ["%s = %s" % (key, toml_value(value)) for key, value in table.items()]
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, *extra, ready=True):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.cli", "run", "-c", self.config, *extra],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if ready:
            self.wait_log("action=service.ready", timeout=30)
        return self

    def signal(self, signum=signal.SIGTERM):
        self.process.send_signal(signum)

    def wait_exit(self, timeout=30):
        return self.process.wait(timeout=timeout)

    def stop(self):
        """Make sure the process is gone (a test that failed half way)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    # -- observing --------------------------------------------------------------------------
    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_log(self, text, timeout=20, count=1):
        def seen():
            if self.process is not None and self.process.poll() is not None \
                    and self.log().count(text) < count:
                raise AssertionError("service exited (%s) before logging %r:\n%s" % (
                    self.process.returncode, text, self.log()[-3000:]))
            return self.log().count(text) >= count
        return wait_for(seen, timeout, 0.05, "service log shows %r" % text)

    def handled(self):
        path = os.path.join(self.directory, "handled.log")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()

    def wait_handled(self, line, timeout=20):
        return wait_for(lambda: line in self.handled(), timeout, 0.02,
                        "handler reported %r (got %r)" % (line, self.handled()[-5:]))

    def open_gate(self):
        with open(os.path.join(self.directory, "gate"), "w"):
            pass

    def cli(self, *args, timeout=60):
        """``pgvisor ARGS`` with this service's environment (add ``-c`` yourself)."""
        return run_cli(*args, env=self.env, timeout=timeout)

    def get(self, path):
        request = urllib.request.Request(self.url + path)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read().decode("utf-8"))

    def api_token(self):
        """The token the service uses: the configured one, else the one it generated
        (``api.token`` in its state directory, the registry's directory by default)."""
        if self.token:
            return self.token
        with open(os.path.join(self.directory, "api.token"), encoding="ascii") as f:
            return f.read().strip()

    def call(self, method, path, body=None, token=None, headers=None):
        """``(status, parsed JSON)`` of one request; mutations carry the token and the
        JSON content type unless ``headers`` say otherwise."""
        sent = {"Content-Type": "application/json"} if method != "GET" else {}
        sent["Authorization"] = "Bearer %s" % (token if token is not None else
                                               self.api_token())
        sent.update(headers or {})
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={k: v for k, v in sent.items() if v})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode("utf-8"))

    def status(self):
        """``{name: instance view}`` from GET /status."""
        return {view["name"]: view for view in self.get("/status")["instances"]}

    def wait_state(self, name, state, timeout=30):
        return wait_for(lambda: self.status().get(name, {}).get("state") == state, timeout,
                        0.05, "instance %s is %s" % (name, state))
