"""``pgvisor restart|verify|shutdown NAME... [--wait]`` and ``pgvisor status [--watch
[SECONDS]]``: the verbs that talk to a running service over its HTTP API.

The API's address comes from ``--url``, else the config's ``[http] listen`` (``-c``), else
``PGVISOR_HTTP_LISTEN`` and the default; the token from ``--token-file`` (or ``--token``,
which warns), else the config's (its ``token_file``, or the token the service generated in
its state directory), else ``PGVISOR_HTTP_TOKEN``. Each
command blocks the main greenlet up to ``--timeout`` seconds per request.

``status --watch`` repeats ``GET /status`` every SECONDS until Ctrl-C: on a terminal it
redraws the table in place with plain ANSI (cursor home, erase) and adds each instance's
processed per second between two answers; otherwise (a pipe, a file) it prints one
timestamped table per interval, and with ``--json`` one JSON document per line.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time
import urllib.parse

from instances import logformat
from instances.exceptions import InvalidConfigurationException
from supervisor.cli import output as cli_output
from supervisor.cli.api import ApiClient
from supervisor.cli.options import common_flags, load
from supervisor.cli.output import CliError, emit_json, say, table
from supervisor.config.settings import BY_NAME, split_listen
from supervisor.config.token import api_token, read_token_file

#: The control verbs: (command, help).
VERBS = (("restart", "restart instances (clears parking)"),
         ("verify", "bring instances in line with the registry"),
         ("shutdown", "stop instances until restarted"))
#: Outcomes of restart/verify/shutdown that mean the operation failed.
FAILED_OUTCOMES = ("disabled_by_supervisor", "error")
#: Seconds between two refreshes of ``status --watch`` without a value.
WATCH_INTERVAL = 2.0
#: ANSI: cursor home, erase to the end of the line, erase the rest of the screen.
HOME, ERASE_LINE, ERASE_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
#: The status table's columns (``status --watch`` adds RATE/S; a node of a cluster adds
#: CLUSTER_COLUMNS after STATE).
STATUS_COLUMNS = [
    ("NAME", "name"), ("STATE", "state"), ("ENABLED", "enabled"), ("CHANNELS", "channels"),
    ("CONC", "concurrency"), ("BACKLOG", "backlog"), ("RECEIVED", "received"),
    ("PROCESSED", "processed"), ("FAILED", "failed"), ("RESTARTS", "restarts"),
    ("BUDGET", "budget_left"), ("LAST ERROR", "last_error")]
#: With clustering on (the instances' statuses carry ``node``): where each instance is
#: assigned and that assignment's epoch (``-``: assigned nowhere).
CLUSTER_COLUMNS = [("NODE", "node"), ("EPOCH", "epoch")]


def register(subparsers):
    """Add the control verbs and ``status`` to the top-level ``subparsers``."""
    for verb, text in VERBS:
        one = subparsers.add_parser(verb, help=text + " (over HTTP)", description=text)
        http_flags(one)
        one.add_argument("names", nargs="+", metavar="NAME")
        one.add_argument("--wait", action="store_true", help="wait for the outcome")
        one.set_defaults(func=cmd_action)
    status = subparsers.add_parser("status",
                                   help="instances and database of the running service")
    http_flags(status)
    status.add_argument("--watch", nargs="?", type=seconds, const=WATCH_INTERVAL,
                        metavar="SECONDS", help="refresh every SECONDS (default %g) until "
                        "Ctrl-C; in place on a terminal" % WATCH_INTERVAL)
    status.set_defaults(func=cmd_status)


def http_flags(parser):
    common_flags(parser)
    parser.add_argument("--url", help="the service's API, e.g. http://127.0.0.1:7390 "
                        "(default: from the config's [http] listen)")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the bearer "
                        "token (default: the config's token, or the one the service "
                        "generated in its state directory; or PGVISOR_HTTP_TOKEN)")
    parser.add_argument("--token", help="bearer token (shows in the process list: prefer "
                        "--token-file or PGVISOR_HTTP_TOKEN)")
    parser.add_argument("--timeout", type=seconds, default=30.0, metavar="SECONDS",
                        help="seconds to wait for the service (and for --wait)")


def seconds(text):
    """argparse type: a finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("%r: must be seconds greater than 0" % text)
    return value


def api_client(args):
    """The ApiClient for ``--url`` and the token: ``--token`` (warned about: it shows in
    the process list), ``--token-file``, the config's (``-c``: its ``[http] token_file``
    or the token the service generated in its state directory), ``PGVISOR_HTTP_TOKEN``."""
    url, token = args.url, _flag_token(args)
    if args.config:
        cfg = load(args.config)
        if cfg.http.address is None and url is None:
            raise CliError("the HTTP API is disabled in %s ([http] listen); give --url"
                           % args.config, cli_output.USAGE)
        url = url or _url(*cfg.http.address)
        if token is None:
            token = _config_token(cfg)
    if url is None:
        listen = os.environ.get(BY_NAME["http.listen"].env) or BY_NAME["http.listen"].default
        url = _url(*split_listen(listen))
    token = token or os.environ.get(BY_NAME["http.token"].env)
    logformat.register_secret(token)
    return ApiClient(_checked_url(url), token, timeout=args.timeout)


def _flag_token(args):
    if args.token:
        logformat.register_secret(args.token)
        cli_output.error("warning: --token shows in the process list (ps); use --token-file "
                         "FILE or PGVISOR_HTTP_TOKEN")
        return args.token
    if args.token_file:
        try:
            return read_token_file(os.path.abspath(args.token_file))
        except InvalidConfigurationException as exc:
            raise CliError("--token-file %s" % exc, cli_output.USAGE) from None
    return None


def _config_token(cfg):
    try:
        return api_token(cfg)[0]
    except InvalidConfigurationException as exc:
        raise CliError(str(exc), cli_output.USAGE) from None


def _checked_url(url):
    parts = urllib.parse.urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise CliError("--url %r: must be http://HOST:PORT (the service's [http] listen)"
                       % url, cli_output.USAGE)
    return url


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
    """``pgvisor status [--watch [SECONDS]]``: the service's instances and database."""
    client = api_client(args)
    if args.watch is not None:
        return _watch(client, args.watch, args.json)
    _, body = client.get("/status")
    if args.json:
        emit_json(body)
    else:
        say(status_text(body))
    return cli_output.OK


def status_text(body, rates=None):
    """The database line and the instances table of a ``GET /status`` answer; with
    ``rates`` ({name: processed per second}) a RATE/S column."""
    db = body.get("database", {})
    head = "database: %s, role %s%s" % (db.get("state"), db.get("role") or "-",
                                        ", paused (%s)" % db.get("paused_by")
                                        if db.get("paused") else "")
    instances = body.get("instances", [])
    columns = list(STATUS_COLUMNS)
    if rates is not None:
        columns.insert(8, ("RATE/S", lambda row: rates.get(row.get("name"))))
    if any("node" in row for row in instances):
        columns[2:2] = CLUSTER_COLUMNS
    return head + "\n" + table(instances, columns, empty="no instances")


def _watch(client, interval, as_json):
    """Show ``GET /status`` every ``interval`` seconds until Ctrl-C (exit 0). A failed
    request is shown and retried at the next interval (the service may be restarting)."""
    tty = sys.stdout.isatty() and not as_json
    rates, before = {}, {}
    if tty:
        sys.stdout.write("\x1b[2J")
    try:
        while True:
            started = time.monotonic()
            try:
                _, body = client.get("/status")
            except CliError as exc:
                body, problem = None, str(exc)
            else:
                problem = None
                rates = _rates(body, before, started)
            _show_frame(body, problem, rates, interval, tty, as_json, client.url)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        if tty:
            sys.stdout.write("\n")
        return cli_output.OK


def _rates(body, before, now):
    """Processed per second of each instance since the previous answer (kept in
    ``before``, updated); None where unknown (first sight, a counter that began again)."""
    rates = {}
    for view in body.get("instances", []):
        name, processed = view.get("name"), view.get("processed")
        last = before.get(name)
        if isinstance(processed, int) and last is not None and processed >= last[0] \
                and now > last[1]:
            rates[name] = (processed - last[0]) / (now - last[1])
        before[name] = (processed, now) if isinstance(processed, int) else None
    return rates


def _show_frame(body, problem, rates, interval, tty, as_json, url):
    stamp = time.strftime("%H:%M:%S")
    if as_json:
        say(json.dumps(body if problem is None else {"error": problem}, sort_keys=True,
                       default=str))
    elif problem is not None and not tty:
        cli_output.error(problem)
    else:
        text = problem if problem is not None else status_text(body, rates)
        header = "pgvisor status %s every %gs, %s (Ctrl-C ends)" % (url, interval, stamp)
        if not tty:
            say("%s\n%s\n" % (header, text))
            sys.stdout.flush()
            return
        width = shutil.get_terminal_size().columns
        lines = [line[:width] for line in [header, ""] + text.splitlines()]
        frame = HOME + "".join(logformat.redact(line) + ERASE_LINE + "\n"
                               for line in lines) + ERASE_BELOW
        sys.stdout.write(frame)
    sys.stdout.flush()
