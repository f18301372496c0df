"""The ``pgvisor`` commands other than the registry verbs: run, status, restart / verify /
shutdown, queue stats / requeue, and the demo and piper delegates.

Each ``cmd_*(args)`` takes the parsed arguments (see :mod:`supervisor.cli`), prints, and
returns an exit code or raises :class:`~supervisor.cli.output.CliError`. They run in the
main greenlet of a monkey-patched process; ``cmd_run`` blocks until the service stops.
"""
import importlib
import logging
import os
import sys
import urllib.parse

from instances.exceptions import InvalidConfigurationException
from supervisor import logs
from supervisor.cli import output as cli_output
from supervisor.cli.api import ApiClient
from supervisor.cli.output import CliError, emit_json, say, table
from supervisor.config import load_config
from supervisor.config.settings import BY_NAME, split_listen

#: Outcomes of restart/verify/shutdown that mean the operation failed.
FAILED_OUTCOMES = ("disabled_by_supervisor", "error")
#: Environment variables whose values are secrets even before the config is loaded.
SECRET_ENV = ("PGVISOR_DATABASE_PASSWORD", "PGVISOR_HTTP_TOKEN")


# -- configuration ---------------------------------------------------------------------------

def load(path, overrides=None):
    """load_config with its problems as a CliError (exit 2, one line per problem); the
    config's secrets are registered for redaction before anything else is printed."""
    for var in SECRET_ENV:
        logs.register_secret(os.environ.get(var))
    try:
        cfg = load_config(path, overrides=overrides)
    except InvalidConfigurationException as exc:
        raise CliError("\n".join(getattr(exc, "problems", [str(exc)])),
                       cli_output.USAGE) from None
    for secret in cfg.secrets():
        logs.register_secret(secret)
    return cfg


def cmd_run(args):
    """``pgvisor run``: the service in the foreground until SIGTERM/SIGINT."""
    from supervisor.service import Service  # the service's weight only where it runs

    try:  # the flags' logging already for load_config's warnings; load reports bad ones
        logs.configure_logging(args.log_level or "info", args.log_format or "text")
    except InvalidConfigurationException:
        logs.configure_logging()
    overrides = {name: getattr(args, dest) for dest, name in args.setting_flags}
    cfg = load(args.config, overrides)
    logs.configure_logging(cfg.logging.level, cfg.logging.format)
    service = Service(cfg, load_config=lambda: load_config(args.config, overrides=overrides))
    code = service.run()
    if service.aborted:
        # A second signal: leave now. The drain, the watcher and monitor threads and the
        # worker processes (they stop when our stdin pipe to them closes) are abandoned;
        # unwinding the interpreter under them can crash it, so the CLI, the only layer
        # allowed to, ends the process here after flushing what was logged.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


# -- the control verbs (HTTP) ----------------------------------------------------------------

def api_client(args):
    """The ApiClient for ``--url``/``--token``, else the config's [http], else the
    environment and the defaults."""
    url, token = args.url, args.token
    if (url is None or token is None) and args.config:
        cfg = load(args.config)
        if cfg.http.address is None and url is None:
            raise CliError("the HTTP API is disabled in %s ([http] listen); give --url"
                           % args.config, cli_output.USAGE)
        url = url or _url(*cfg.http.address)
        token = token or cfg.http.token
    if url is None:
        listen = os.environ.get(BY_NAME["http.listen"].env) or BY_NAME["http.listen"].default
        url = _url(*split_listen(listen))
    token = token or os.environ.get(BY_NAME["http.token"].env)
    logs.register_secret(token)
    return ApiClient(url, token, timeout=args.timeout)


def _url(host, port):
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    return "http://%s:%d" % ("[%s]" % host if ":" in host else host, port)


def cmd_action(args):
    """``pgvisor restart|verify|shutdown NAME... [--wait]``."""
    client, results, code = api_client(args), {}, cli_output.OK
    query = {"wait": 1, "timeout": args.timeout} if args.wait else None
    for name in args.names:
        path = "/instances/%s/%s" % (urllib.parse.quote(name, safe=""), args.command)
        try:
            _, body = client.post(path, query, wait=args.timeout if args.wait else 0.0)
        except CliError as exc:
            if exc.code != cli_output.UNKNOWN_INSTANCE:
                raise
            results[name] = {"error": str(exc)}
            code = cli_output.UNKNOWN_INSTANCE
            continue
        results[name] = body
        if _outcome_failed(body, name) and code == cli_output.OK:
            code = cli_output.FAILED
    if args.json:
        emit_json(results)
        return code
    for name, body in results.items():
        if "status" not in body:
            cli_output.error("%s %s: %s" % (args.command, name, body.get("error")))
        else:
            say("%s %s: %s" % (args.command, name, _describe(body, name)))
    return code


def _outcome(body, name):
    return (body.get("result") or {}).get(name) if body.get("status") == "done" else None


def _outcome_failed(body, name):
    if body.get("status") == "failed":
        return True
    outcome = _outcome(body, name)
    return isinstance(outcome, str) and outcome.startswith(FAILED_OUTCOMES)


def _describe(body, name):
    if body.get("status") == "done":
        return str(_outcome(body, name))
    if body.get("status") == "failed":
        return "failed: %s" % body.get("error")
    return "accepted (operation %s; pending)" % body.get("operation")


def cmd_status(args):
    """``pgvisor status``: the service's instances and database."""
    _, body = api_client(args).get("/status")
    if args.json:
        emit_json(body)
        return cli_output.OK
    db = body.get("database", {})
    say("database: %s, role %s%s" % (db.get("state"), db.get("role") or "-",
                                     ", paused (%s)" % db.get("paused_by")
                                     if db.get("paused") else ""))
    say(table(body.get("instances", []), [
        ("NAME", "name"), ("STATE", "state"), ("ENABLED", "enabled"),
        ("CHANNELS", "channels"), ("CONC", "concurrency"), ("BACKLOG", "backlog"),
        ("RECEIVED", "received"), ("PROCESSED", "processed"), ("FAILED", "failed"),
        ("RESTARTS", "restarts"), ("LAST ERROR", "last_error")], empty="no instances"))
    return cli_output.OK


# -- spool queues ------------------------------------------------------------------------------

def _spool(directory):
    directory = os.path.abspath(directory)
    if not os.path.isdir(os.path.join(directory, "incoming")):
        raise CliError("%s is not a spool directory (no incoming/ in it)" % directory,
                       cli_output.USAGE)
    return directory


def cmd_queue(args):
    """``pgvisor queue stats DIR`` and ``pgvisor queue requeue DIR [--errors]``."""
    from instances.spool import layout

    directory = _spool(args.directory)
    result = {"directory": directory}
    if args.verb == "requeue":
        from instances.spool import FileQueue
        before = layout.stats(directory)
        queue = FileQueue(directory, owner="cli")  # its recovery requeues dead owners' work
        try:
            result["errors_requeued"] = queue.requeue(errors=True) if args.errors else 0
        finally:
            queue.close()
        after = layout.stats(directory)
        result["pending_requeued"] = max(0, sum(before["pending"].values())
                                         - sum(after["pending"].values()))
    result.update(layout.stats(directory))
    if args.json:
        emit_json(result)
    else:
        if args.verb == "requeue":
            say("requeued %d pending message file(s) of dead consumers, %d from errors/"
                % (result["pending_requeued"], result["errors_requeued"]))
        say("%s: incoming %d, pending %d %s, errors %d, tmp %d, oldest %s" % (
            directory, result["incoming"], sum(result["pending"].values()),
            result["pending"] or "", result["errors"], result["tmp"],
            "-" if result["oldest_age"] is None else "%.1f s" % result["oldest_age"]))
    return cli_output.OK


# -- delegates ---------------------------------------------------------------------------------

def delegate(command, argv):
    """``pgvisor demo ...`` / ``pgvisor piper ...``: ``supervisor.<command>.main(argv)``."""
    module_name = "supervisor.%s" % command
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise CliError("`pgvisor %s` is not available in this installation (module %s is "
                       "missing)" % (command, module_name), cli_output.FAILED) from None
    code = module.main(list(argv))
    return cli_output.OK if code is None else int(code)
