"""``pgvisor instances list|show|add|update|remove|enable|disable|export|import``: the
registry verbs.

They edit the registry directly through the same API the service uses, whatever the
backend: the file (:class:`~instances.registry.Registry`, atomic writes under its lock; a
running service picks every edit up through its file watcher) or the Postgres table
(:class:`~instances.registry.PostgresRegistry`, one transaction per edit; every running node
hears of it through the edit's NOTIFY). So they work with the service down. Which
registry: ``--registry PATH`` (a file), else the ``[registry]`` of the config (``-c``: its
``backend``, ``path``, ``schema`` and ``[database]``), else the environment
(``PGVISOR_REGISTRY_BACKEND=postgres`` with the ``PGVISOR_DATABASE_*`` variables, or
``PGVISOR_REGISTRY_PATH``).

``export [FILE]`` writes the registry as a registry file (stdout without FILE); ``import
FILE`` checks the whole file first (every problem named, nothing written), then stores its
instances in one atomic edit: each replaces the instance of its name or is added, the others
stay (``--replace``: the others are removed).

A handler whose module is not importable where the CLI runs (another virtualenv, the
application's own path) is stored unchecked, with a warning: the service resolves it when
it starts the instance. Blocking file or database I/O, milliseconds; main greenlet.
"""
import contextlib
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile

from instances.dsn import redact_dsn
from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.registry import (
    InstanceExists,
    RegistryUnavailable,
    UnknownInstance,
    dump,
    open_registry,
    parse,
)
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
#: What the edit message adds, per backend.
EDIT_NOTE = {"file": "(a running service picks the change up from the file)",
             "postgres": "(every running node picks the change up from its NOTIFY)"}
#: The registry verbs: (verb, help).
VERBS = (("list", "list the registered instances"), ("show", "one instance's fields"),
         ("add", "register an instance"), ("update", "change fields of an instance"),
         ("remove", "unregister an instance"), ("enable", "enable an instance"),
         ("disable", "disable an instance (it is stopped)"),
         ("export", "write the registry as a registry file (JSON)"),
         ("import", "store the instances of a registry file, in one atomic edit"))
#: Mode of a file written by ``export`` (specs may hold DSN passwords).
EXPORT_MODE = 0o600


def register(subparsers):
    """Add ``instances`` and its verbs to the top-level ``subparsers``."""
    parser = subparsers.add_parser("instances",
                                   help="edit the registry (works with the service down)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in VERBS:
        one = verbs.add_parser(verb, help=text, description=text)
        common_flags(one)
        one.add_argument("--registry", metavar="PATH", help="registry file (default: the "
                         "config's [registry])")
        if verb == "export":
            one.add_argument("file", metavar="FILE", nargs="?",
                             help="file to write (default: standard output)")
        elif verb == "import":
            one.add_argument("file", metavar="FILE", help="registry file to read")
            one.add_argument("--replace", action="store_true", help="remove the instances "
                             "the file does not name (default: keep them)")
        elif verb != "list":
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


@dataclasses.dataclass(frozen=True)
class Where:
    """The registry the verbs edit: ``backend`` ("file" or "postgres"), ``path`` (file),
    ``dsn`` and ``schema`` (postgres)."""

    backend: str
    path: str = None
    dsn: object = None
    schema: str = None

    def open(self, resolve=False):
        return open_registry(self.backend, path=self.path, dsn=self.dsn, schema=self.schema,
                             resolve=resolve)


def registry_where(args):
    """:class:`Where` from ``--registry``, ``-c`` or the environment; CliError if none."""
    if args.registry:
        return Where("file", path=os.path.abspath(args.registry))
    if args.config:
        return _where_of(load(args.config))
    if os.environ.get(BY_NAME["registry.backend"].env) == "postgres":
        return _where_of(load(None))
    env = os.environ.get(BY_NAME["registry.path"].env)
    if env:
        return Where("file", path=os.path.abspath(env))
    raise CliError("which registry? give -c CONFIG or --registry PATH (or set %s)"
                   % BY_NAME["registry.path"].env, cli_output.USAGE)


def _where_of(cfg):
    if cfg.registry.backend == "postgres":
        return Where("postgres", dsn=cfg.database.connect_dsn(), schema=cfg.registry.schema)
    return Where("file", path=cfg.registry.path)


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
    except RegistryUnavailable as exc:
        raise CliError(str(exc), cli_output.UNREACHABLE) from None
    except RegistryError as exc:
        raise CliError(str(exc), cli_output.FAILED) from None


def cmd_instances(args):
    where = registry_where(args)
    with registry_errors():
        return _VERBS[args.verb](args, where)


def _missing(where):
    """True for a registry file that does not exist (reading verbs do not create it)."""
    return where.backend == "file" and not os.path.exists(where.path)


def _specs(where):
    """The registered specs, without creating a missing file."""
    return [] if _missing(where) else list(where.open())


def view(spec):
    """A spec as shown: its fields, the dsn's password masked (as the HTTP API shows it)."""
    data = spec.to_dict()
    data["dsn"] = redact_dsn(data.get("dsn"))
    return data


def do_list(args, where):
    views = [view(spec) for spec in _specs(where)]
    if args.json:
        emit_json(views)
        return cli_output.OK
    say(table(views, [
        ("NAME", "name"), ("ENABLED", "enabled"), ("CHANNELS", "channels"),
        ("HANDLER", "handler"),
        ("CONCURRENCY", lambda v: "%d-%d" % (v["min_concurrency"], v["max_concurrency"])),
        ("RUN ON", "run_on"), ("RESTART", "restart"),
        ("QUEUE", lambda v: "spool %s" % v["queue"]["spool"] if v["queue"] else "memory")],
        empty="no instances in %s" % (where.path or "schema %s" % where.schema)))
    return cli_output.OK


def do_show(args, where):
    if _missing(where):
        raise UnknownInstance("no instance named %r in registry %s (the file does not "
                              "exist)" % (args.name, where.path))
    data = view(where.open().get(args.name))
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


def do_add(args, where):
    fields = dict(spec_fields(args), name=args.name)
    resolve = importable(fields.get("handler"))
    spec = InstanceSpec.from_dict(fields, resolve=resolve)
    registry = where.open(resolve)
    registry.add(spec)
    return _changed(args, "added", registry, spec, where)


def do_update(args, where):
    fields = spec_fields(args)
    if not fields:
        raise CliError("nothing to update: give at least one field flag (see "
                       "`pgvisor instances update --help`)", cli_output.USAGE)
    resolve = "handler" in fields and importable(fields["handler"])
    registry = where.open(resolve)
    spec = registry.update(args.name, **fields)
    return _changed(args, "updated", registry, spec, where)


def do_remove(args, where):
    registry = where.open()
    return _changed(args, "removed", registry, registry.remove(args.name), where)


def do_enable(args, where):
    registry = where.open()
    return _changed(args, "enabled", registry, registry.enable(args.name), where)


def do_disable(args, where):
    registry = where.open()
    return _changed(args, "disabled", registry, registry.disable(args.name), where)


def do_export(args, where):
    """The registry as a registry file (no enables: they are the service's signal)."""
    registry = None if _missing(where) else where.open()
    specs, version = (list(registry), registry.version) if registry is not None else ([], 0)
    text = dump(specs, version)
    if not args.file or args.file == "-":
        sys.stdout.write(text)
        return cli_output.OK
    _write_export(os.path.abspath(args.file), text)
    if args.json:
        emit_json({"result": "exported", "file": os.path.abspath(args.file),
                   "instances": len(specs), "registry_version": version})
    else:
        say("exported %d instance(s) to %s" % (len(specs), args.file))
    return cli_output.OK


def _write_export(path, text):
    """Write ``text`` to ``path`` atomically (a temp file beside it, then a rename)."""
    directory = os.path.dirname(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".export.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), EXPORT_MODE)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError, TypeError):
            os.unlink(tmp)
        raise CliError("cannot write %s: %s" % (path, exc.strerror or exc),
                       cli_output.FAILED) from None


def do_import(args, where):
    """Check the whole file, then one atomic edit (merge, or ``--replace``)."""
    try:
        with open(args.file, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CliError("cannot read %s: %s" % (args.file, exc.strerror or exc),
                       cli_output.USAGE) from None
    try:
        specs, _, _ = parse(raw, args.file)
    except RegistryError as exc:
        raise CliError("nothing imported: %s" % exc, cli_output.USAGE) from None
    registry = where.open()
    report = registry.merge(specs.values(), replace=args.replace)
    if args.json:
        emit_json(dict(report, result="imported", registry=registry.location,
                       registry_version=registry.version))
    else:
        say("imported %s into %s, version %d %s" % (", ".join(
            "%d %s" % (len(names), key) for key, names in report.items()),
            registry.location, registry.version, EDIT_NOTE[where.backend]))
    return cli_output.OK


def _changed(args, what, registry, spec, where):
    if args.json:
        emit_json({"result": what, "instance": view(spec), "registry": registry.location,
                   "registry_version": registry.version})
    else:
        say("%s %s in %s, version %d %s" % (what, spec.name, registry.location,
                                             registry.version, EDIT_NOTE[where.backend]))
    return cli_output.OK


_VERBS = {"list": do_list, "show": do_show, "add": do_add, "update": do_update,
          "remove": do_remove, "enable": do_enable, "disable": do_disable,
          "export": do_export, "import": do_import}
