"""Config reload (SIGHUP): what changed between two Configs, and applying what can change live.

:func:`config_changes` is pure (two Configs in, a list of :class:`Change` out);
:func:`apply_changes` sets the live settings on the running service and logs one line per
change: ``applied`` for :data:`LIVE` settings, ``needs a restart`` for the others (the
running value stays in force until ``pgvisor run`` starts again). Secret values are never
shown, only that they changed.
"""
import dataclasses
import logging

from instances.dsn import REDACTED
from supervisor import logs
from supervisor.config.settings import BY_NAME, SECTIONS

log = logging.getLogger(__name__)

#: Settings a running service takes without a restart ("section.key").
LIVE = frozenset(("supervisor.interval", "supervisor.wait_after_db_revived",
                  "supervisor.heartbeat_timeout", "supervisor.shutdown_grace",
                  "logging.level", "logging.format"))


@dataclasses.dataclass(frozen=True)
class Change:
    """One setting whose value differs: ``old``/``new`` as shown (secrets masked)."""

    name: str
    old: object
    new: object
    live: bool


def config_changes(old, new):
    """The :class:`Change` list from Config ``old`` to Config ``new``, in table order."""
    changes = []
    shown_old, shown_new = old.to_dict(redact=True), new.to_dict(redact=True)
    for section in SECTIONS:
        raw_old, raw_new = getattr(old, section), getattr(new, section)
        for field in dataclasses.fields(raw_old):
            if getattr(raw_old, field.name) == getattr(raw_new, field.name):
                continue
            name = "%s.%s" % (section, field.name)
            secret = BY_NAME[name].secret
            changes.append(Change(
                name, REDACTED if secret else shown_old[section][field.name],
                REDACTED if secret else shown_new[section][field.name], name in LIVE))
    return changes


def apply_changes(service, changes, new):
    """Set the live ``changes`` on ``service`` (its supervisor, the logging) and log each."""
    if any(c.name.startswith("logging.") for c in changes):
        logs.configure_logging(new.logging.level, new.logging.format)
    for change in changes:
        section, key = change.name.split(".")
        if change.live and section == "supervisor":
            setattr(service.supervisor, key, getattr(new.supervisor, key))
        if change.live:
            log.info("config %s: %s -> %s (applied)", change.name, change.old, change.new,
                     extra={"action": "config.changed", "instance": None,
                            "setting": change.name})
        else:
            log.warning("config %s: %s -> %s (needs a restart: the running service keeps "
                        "the old value)", change.name, change.old, change.new,
                        extra={"action": "config.needs_restart", "instance": None,
                               "setting": change.name})
    if not changes:
        log.info("config unchanged", extra={"action": "config.unchanged", "instance": None})
