"""``pgvisor restart|verify|shutdown NAME... [--wait]`` and ``pgvisor status``: the verbs
that talk to a running service over its HTTP API.

The API's address comes from ``--url``, else the config's ``[http] listen`` (``-c``), else
``PGVISOR_HTTP_LISTEN`` and the default; the token from ``--token-file`` (or ``--token``,
which warns), else the config's (its ``token_file``, or the token the service generated in
its state directory), else ``PGVISOR_HTTP_TOKEN``. Each
command blocks the main greenlet up to ``--timeout`` seconds per request.
"""
import argparse
import math
import os
import urllib.parse

from instances.exceptions import InvalidConfigurationException
from supervisor import logs
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


def register(subparsers):
    """Add the control verbs and ``status`` to the top-level ``subparsers``."""
    for verb, text in VERBS:
        one = subparsers.add_parser(verb, help=text + " (over HTTP)", description=text)
        _http_flags(one)
        one.add_argument("names", nargs="+", metavar="NAME")
        one.add_argument("--wait", action="store_true", help="wait for the outcome")
        one.set_defaults(func=cmd_action)
    status = subparsers.add_parser("status",
                                   help="instances and database of the running service")
    _http_flags(status)
    status.set_defaults(func=cmd_status)


def _http_flags(parser):
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
    logs.register_secret(token)
    return ApiClient(_checked_url(url), token, timeout=args.timeout)


def _flag_token(args):
    if args.token:
        logs.register_secret(args.token)
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
