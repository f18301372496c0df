"""``pgvisor instances list|show|add|update|remove|enable|disable``: the registry verbs.

They edit the registry file directly through :class:`~instances.registry.Registry` (atomic
writes under its lock), so they work with the service down; a running service picks every
edit up through its registry file watcher. The file is ``--registry PATH``, else the
config's ``[registry] path`` (``-c``), else ``PGVISOR_REGISTRY_PATH``.

A handler whose module is not importable where the CLI runs (another virtualenv, the
application's own path) is stored unchecked, with a warning: the service resolves it when
it starts the instance. Blocking file I/O, milliseconds; main greenlet.
"""
import contextlib
import importlib.util
import json
import os

from instances.dsn import redact_dsn
from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.registry import InstanceExists, Registry, UnknownInstance
from instances.spec import ISOLATIONS, RESTART_TYPES, ROLES, InstanceSpec
from supervisor.cli import output as cli_output
from supervisor.cli.options import common_flags, load
from supervisor.cli.output import CliError, emit_json, error, key_values, say, table
from supervisor.config.settings import BY_NAME

#: (flag destination, spec field) of the typed add/update flags.
FIELD_FLAGS = (("channels", "channels"), ("handler", "handler"),
               ("min", "min_concurrency"), ("max", "max_concurrency"),
               ("run_on", "run_on"), ("restart", "restart"), ("queue_size", "queue_size"),
               ("handler_timeout", "handler_timeout"), ("isolation", "isolation"),
               ("dsn", "dsn"), ("restart_max_rate", "restart_max_rate"),
               ("enabled", "enabled"), ("batch", "batch"), ("order_key", "order_key"))
EDIT_NOTE = "(a running service picks the change up from the file)"
#: The registry verbs: (verb, help).
VERBS = (("list", "list the registered instances"), ("show", "one instance's fields"),
         ("add", "register an instance"), ("update", "change fields of an instance"),
         ("remove", "unregister an instance"), ("enable", "enable an instance"),
         ("disable", "disable an instance (it is stopped)"))


def register(subparsers):
    """Add ``instances`` and its verbs to the top-level ``subparsers``."""
    parser = subparsers.add_parser("instances",
                                   help="edit the registry (works with the service down)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in VERBS:
        one = verbs.add_parser(verb, help=text, description=text)
        common_flags(one)
        one.add_argument("--registry", metavar="PATH", help="registry file (default: the "
                         "config's [registry] path)")
        if verb != "list":
            one.add_argument("name", metavar="NAME")
        if verb in ("add", "update"):
            _spec_flags(one, update=verb == "update")
    parser.set_defaults(func=cmd_instances)


def _spec_flags(parser, update):
    parser.add_argument("--channel", dest="channels", action="append", metavar="CHANNEL",
                        required=not update, help="LISTEN channel (repeat for several%s)"
                        % ("; replaces the list" if update else ""))
    parser.add_argument("--handler", required=not update, metavar="MODULE:CALLABLE")
    parser.add_argument("--min", type=int, metavar="N", help="min_concurrency")
    parser.add_argument("--max", type=int, metavar="N", help="max_concurrency")
    parser.add_argument("--run-on", choices=ROLES)
    parser.add_argument("--restart", choices=RESTART_TYPES)
    parser.add_argument("--queue-spool", metavar="DIR", help="durable spool queue directory")
    if update:
        parser.add_argument("--memory-queue", action="store_true",
                            help="back to the memory queue")
    parser.add_argument("--queue-size", type=int, metavar="N", help="memory queue bound")
    parser.add_argument("--handler-timeout", metavar="SECONDS", help="seconds, or 'none'")
    parser.add_argument("--isolation", choices=ISOLATIONS)
    parser.add_argument("--dsn", help="DSN override for this instance")
    parser.add_argument("--restart-max-rate", metavar="RATE")
    parser.add_argument("--batch", type=int, metavar="N",
                        help="a batch handler: lists of up to N notifications per call")
    parser.add_argument("--order-key", metavar="KEY", help="channel, payload or "
                        "MODULE:FUNCTION: same-key notifications never overlap, keep order")
    group = parser.add_mutually_exclusive_group()
    if update:
        group.add_argument("--enable", dest="enabled", action="store_const", const=True)
    group.add_argument("--disabled", "--disable", dest="enabled", action="store_const",
                       const=False, help="registered but not started")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="any spec field, VALUE as JSON (repeatable)")


def registry_path(args):
    if args.registry:
        return os.path.abspath(args.registry)
    if args.config:
        return load(args.config).registry.path
    env = os.environ.get(BY_NAME["registry.path"].env)
    if env:
        return os.path.abspath(env)
    raise CliError("which registry? give -c CONFIG or --registry PATH (or set %s)"
                   % BY_NAME["registry.path"].env, cli_output.USAGE)


@contextlib.contextmanager
def registry_errors():
    """Registry and spec exceptions as CliErrors with the documented exit codes."""
    try:
        yield
    except UnknownInstance as exc:
        raise CliError(str(exc), cli_output.UNKNOWN_INSTANCE) from None
    except InstanceExists as exc:
        raise CliError(str(exc), cli_output.FAILED) from None
    except InvalidConfigurationException as exc:
        raise CliError(str(exc), cli_output.USAGE) from None
    except RegistryError as exc:
        raise CliError(str(exc), cli_output.FAILED) from None


def cmd_instances(args):
    path = registry_path(args)
    with registry_errors():
        return _VERBS[args.verb](args, path)


def _open(path, resolve=False):
    return Registry(path, resolve=resolve)


def _specs(path):
    """The registered specs, without creating a missing file."""
    return list(_open(path)) if os.path.exists(path) else []


def view(spec):
    """A spec as shown: its fields, the dsn's password masked (as the HTTP API shows it)."""
    data = spec.to_dict()
    data["dsn"] = redact_dsn(data.get("dsn"))
    return data


def do_list(args, path):
    views = [view(spec) for spec in _specs(path)]
    if args.json:
        emit_json(views)
        return cli_output.OK
    say(table(views, [
        ("NAME", "name"), ("ENABLED", "enabled"), ("CHANNELS", "channels"),
        ("HANDLER", "handler"),
        ("CONCURRENCY", lambda v: "%d-%d" % (v["min_concurrency"], v["max_concurrency"])),
        ("RUN ON", "run_on"), ("RESTART", "restart"),
        ("QUEUE", lambda v: "spool %s" % v["queue"]["spool"] if v["queue"] else "memory")],
        empty="no instances in %s" % path))
    return cli_output.OK


def do_show(args, path):
    if not os.path.exists(path):
        raise UnknownInstance("no instance named %r in registry %s (the file does not "
                              "exist)" % (args.name, path))
    data = view(_open(path).get(args.name))
    if args.json:
        emit_json(data)
    else:
        say(key_values(data))
    return cli_output.OK


def spec_fields(args):
    """The spec fields given by the add/update flags (None: flag not given)."""
    fields = {field: getattr(args, dest) for dest, field in FIELD_FLAGS
              if getattr(args, dest, None) is not None}
    if getattr(args, "queue_spool", None):
        fields["queue"] = {"spool": os.path.abspath(args.queue_spool)}
    if getattr(args, "memory_queue", False):
        fields["queue"] = None
    if isinstance(fields.get("handler_timeout"), str):
        fields["handler_timeout"] = _seconds_or_none(fields["handler_timeout"])
    for item in args.set or ():
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise CliError("--set %r: must be FIELD=VALUE (VALUE as JSON, or text)" % item,
                           cli_output.USAGE)
        try:
            fields[field.strip()] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError, ValueError):
            fields[field.strip()] = raw
    if "name" in fields and fields["name"] != args.name:
        raise CliError("--set name=%r: differs from NAME %r (the name is the argument; to "
                       "rename, remove and add)" % (fields["name"], args.name),
                       cli_output.USAGE)
    return fields


def _seconds_or_none(text):
    if text.strip().lower() in ("none", "null", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise CliError("--handler-timeout %r: must be seconds or 'none'" % text,
                       cli_output.USAGE) from None


def importable(handler):
    """False when the handler's module cannot be found here (warn, store unchecked)."""
    module = handler.partition(":")[0] if isinstance(handler, str) else ""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found and module:
        error("warning: handler %r: module %r is not importable here; stored unchecked (the "
              "service checks it when it starts the instance)" % (handler, module))
    return found


def do_add(args, path):
    fields = dict(spec_fields(args), name=args.name)
    resolve = importable(fields.get("handler"))
    spec = InstanceSpec.from_dict(fields, resolve=resolve)
    registry = _open(path, resolve)
    registry.add(spec)
    return _changed(args, "added", registry, spec)


def do_update(args, path):
    fields = spec_fields(args)
    if not fields:
        raise CliError("nothing to update: give at least one field flag (see "
                       "`pgvisor instances update --help`)", cli_output.USAGE)
    resolve = "handler" in fields and importable(fields["handler"])
    registry = _open(path, resolve)
    spec = registry.update(args.name, **fields)
    return _changed(args, "updated", registry, spec)


def do_remove(args, path):
    registry = _open(path)
    return _changed(args, "removed", registry, registry.remove(args.name))


def do_enable(args, path):
    registry = _open(path)
    return _changed(args, "enabled", registry, registry.enable(args.name))


def do_disable(args, path):
    registry = _open(path)
    return _changed(args, "disabled", registry, registry.disable(args.name))


def _changed(args, what, registry, spec):
    if args.json:
        emit_json({"result": what, "instance": view(spec), "registry": registry.path,
                   "registry_version": registry.version})
    else:
        say("%s %s in %s, version %d %s" % (what, spec.name, registry.path, registry.version,
                                             EDIT_NOTE))
    return cli_output.OK


_VERBS = {"list": do_list, "show": do_show, "add": do_add, "update": do_update,
          "remove": do_remove, "enable": do_enable, "disable": do_disable}
