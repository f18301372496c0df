"""The :class:`Service`: what ``pgvisor run`` runs, wired together and driven by signals.

Wiring (in start order): the registry (``[registry] backend``: the
:class:`~instances.registry.Registry` file, or the :class:`~instances.registry.PostgresRegistry`
table that the supervisor's follower reloads on every NOTIFY of an edit), the
:class:`~supervisor.Supervisor`, for a file a :class:`~supervisor.watch.FileWatcher` on it
(a hand or CLI edit reaches ``supervisor.reload_registry()``), the
:class:`~supervisor.http.HttpApi`, systemd readiness and watchdog pings
(:mod:`supervisor.sdnotify`). Logging and the secrets are set up by the caller (the CLI)
before the Service exists.

Lifecycle::

    run() -- start() --> serving --SIGHUP--> reload() (config + registry), serving
                            |
                        SIGTERM/SIGINT --> shutdown(): drain, stop --> run() returns 0
                                             |
                                         2nd SIGTERM/SIGINT --> run() returns 1 at once

Drain (the contract): the supervisor is paused (nothing is started or restarted any
more), then every instance drains side by side (:meth:`~instances.instance.Instance.drain`):
its listener stops, a memory queue's backlog is worked off, the handlers in flight finish,
all within one ``shutdown_grace``; past it the handlers are killed. Notifications still in a
memory queue are dropped and counted in an ``instance.dropped_at_shutdown`` warning; the
``catch_up`` at the next start is how the handler finds their rows. A spool keeps its
backlog on disk. Then the supervisor stops (nothing is left running). So a shutdown takes
at most about one shutdown_grace.

Concurrency: run() blocks the calling greenlet (the main one); signal handlers run in
greenlets of their own and only set events or spawn the reload; nothing here raises
SystemExit (the CLI turns the returned code into the exit status).
"""
import gc
import importlib
import logging
import os
import signal
import time

import gevent
import gevent.event

from instances import logformat
from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.registry import RegistryUnavailable, open_registry
from supervisor.actor import Supervisor
from supervisor.config.reload import apply_changes, config_changes
from supervisor.sdnotify import Notifier, Watchdog

log = logging.getLogger(__name__)

#: Modules an instance's start or a change of configuration may need later, imported by the
#: service's start before any instance runs: imported at their first use they would hold the
#: hub while other instances work (measured cold: the spool 25 ms, the file watcher of
#: failover files 23 ms, worker processes 6 ms; more when the disk is busy).
PRELOAD = ("instances.spool", "instances.isolation.parent", "supervisor.watch")


def preload():
    """Import :data:`PRELOAD` (after monkey-patching: the service's start calls it)."""
    for name in PRELOAD:
        importlib.import_module(name)


def supervisor_options(cfg):
    """The Supervisor's keyword arguments from a Config."""
    s = cfg.supervisor
    return dict(interval=s.interval, restart_max_rate=s.restart_max_rate,
                wait_after_db_revived=s.wait_after_db_revived,
                watch_path=cfg.failover.watch_path, failover_files=cfg.failover.files,
                heartbeat_timeout=s.heartbeat_timeout, shutdown_grace=s.shutdown_grace,
                probe_interval=s.probe_interval, probe_timeout=s.probe_timeout,
                failover_debounce=cfg.failover.debounce)


def _desired(registry):
    """The cluster's view of the registry: ``{instance: run_on}``, or None while a
    database registry has not been read (not "no instances")."""
    if not getattr(registry, "loaded", True):
        return None
    return {spec.name: spec.run_on for spec in registry}


#: The cyclic collector's young-generation threshold once started (CPython's default: 700
#: new container objects). Notifications wait in a queue between a listener's read and
#: their handler, and each young collection walks every one still waiting: at 700 that was
#: 2 % of a batch drain's instructions (``python -m bench.instructions``: 10,673 per
#: notification, 10,445 at 2,000, 10,413 at 10,000). A young collection walks at most
#: about this many objects: well under a millisecond of the hub.
GC_YOUNG_THRESHOLD = 2_000


def settle_collector():
    """What ``pgvisor run`` does to the cyclic collector once started (and the benchmarks'
    contenders, to run as it does): a full collection; what is left lives as long as the
    process, so it is frozen out of the collector's full passes, whose pause grows with
    the heap and stalls the hub; and the young generation's threshold is raised to
    :data:`GC_YOUNG_THRESHOLD` (a higher one, or a disabled collector, is kept)."""
    gc.collect()
    gc.freeze()
    young, *older = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


class Service:
    """The service of ``config`` (a :class:`~supervisor.config.Config`).

    ``load_config``: a callable returning a fresh Config (raising
    InvalidConfigurationException), used by SIGHUP; None: SIGHUP reloads the registry only.
    ``notifier``: a :class:`~supervisor.sdnotify.Notifier` (default: from the environment).
    """

    #: Seconds the drain waits beyond shutdown_grace for instances killing their handlers.
    drain_extra_time = 5.0
    #: Seconds the HTTP server gives running requests at shutdown.
    http_stop_timeout = 2.0
    #: Seconds a SIGHUP waits for the supervisor to re-read the registry.
    reload_timeout = 10.0

    def __init__(self, config, load_config=None, notifier=None):
        self.config = config
        self.load_config = load_config
        self.notifier = notifier if notifier is not None else Notifier.from_environ()
        self.registry = self.supervisor = self.watcher = self.http = None
        #: The node's :class:`~supervisor.nodes.Cluster` with ``[cluster] enabled``.
        self.cluster = None
        self._stop_requested = gevent.event.Event()
        self._abort = gevent.event.Event()
        #: True when a second signal cut the shutdown short (run() returned 1 at once).
        self.aborted = False
        self._signals = []
        #: The systemd watchdog pinger (None without WatchdogSec).
        self.watchdog = None

    # -- running ----------------------------------------------------------------------------
    def run(self):
        """Start, serve until SIGTERM/SIGINT, drain and stop; return the exit code (0 after a
        clean shutdown, 1 when start-up failed or a second signal cut the shutdown short,
        2 when the registry file is invalid). Blocks the calling greenlet."""
        self._install_signals()
        try:
            self.start()
        except (InvalidConfigurationException, RegistryError) as exc:
            log.error("cannot start: %s", exc, extra={"action": "service.start_failed",
                                                      "instance": None})
            self._stop_parts()
            return 2
        except OSError as exc:
            log.error("cannot start: %s", exc, extra={"action": "service.start_failed",
                                                      "instance": None})
            self._stop_parts()
            return 1
        self._stop_requested.wait()
        stopper = gevent.spawn(self.shutdown)
        gevent.wait([stopper, self._abort], count=1)
        if not stopper.ready():
            log.warning("second signal: exiting at once without waiting for the drain",
                        extra={"action": "service.abort", "instance": None})
            self.aborted = True
            return 1
        self._cancel_signals()
        return stopper.get()

    def start(self):
        """Open the registry, start the supervisor, the registry watcher and the HTTP API;
        tell systemd READY=1. Raises RegistryError, InvalidConfigurationException or
        OSError (address in use); what started stays started (see :meth:`_stop_parts`)."""
        cfg = self.config
        preload()
        self.registry = self._open_registry(cfg)
        self.supervisor = Supervisor(self.registry, cfg.database.connect_dsn(),
                                     **supervisor_options(cfg))
        log.info("pgvisor starting: database %s, registry %s (%d instances)",
                 cfg.database.display_dsn(), self.registry.location, len(self.registry),
                 extra={"action": "service.start", "instance": None})
        if cfg.cluster.enabled:  # before the supervisor's first verify
            self._start_cluster(cfg)
        self.supervisor.start()
        if cfg.registry.watch and cfg.registry.backend == "file":
            from supervisor.watch import FileWatcher
            self.watcher = FileWatcher.for_file(self.registry.path, self._registry_changed,
                                                field="registry.path")
            self.watcher.start()
        if cfg.http.address is not None:
            self._start_http(cfg)
        if self.notifier.watchdog_interval:
            self.watchdog = Watchdog(self.notifier, self.supervisor.ping).start()
        settle_collector()
        self.notifier.notify("READY=1", "STATUS=supervising %d instances" % len(self.registry))
        log.info("pgvisor ready", extra={"action": "service.ready", "instance": None})

    @staticmethod
    def _open_registry(cfg):
        """The configured registry. A table whose database cannot be reached now starts
        empty: the follower reads it once the database answers (its NOTIFY subscription's
        catch_up), so the service waits for its database as it does for any outage."""
        registry = open_registry(cfg.registry.backend, path=cfg.registry.path,
                                 dsn=cfg.database.connect_dsn(), schema=cfg.registry.schema,
                                 connect=False)
        try:
            registry.reload()
        except RegistryUnavailable as exc:
            log.warning("registry not read yet, starting with no instances until the "
                        "database answers: %s", exc,
                        extra={"action": "registry.unavailable", "instance": None})
        return registry

    def _start_cluster(self, cfg):
        """Join the cluster: from now on the supervisor runs only what it is assigned."""
        from supervisor.nodes import Cluster

        sup, registry = self.supervisor, self.registry
        self.cluster = Cluster(
            cfg.cluster.connect_dsn(cfg.database), node_name=cfg.cluster.node_name,
            lease_ttl=cfg.cluster.lease_ttl, node_grace=cfg.cluster.node_grace,
            wait_after_db_revived=cfg.supervisor.wait_after_db_revived,
            schema=cfg.registry.schema,
            state_dir=cfg.supervisor.state_dir or os.path.dirname(cfg.registry.path),
            desired=lambda: _desired(registry),
            role=lambda: sup.role, instance=sup.instance, changed=sup.nodes_changed)
        sup.cluster = self.cluster
        sup.nodes_changed()  # stop whatever is not assigned here (nothing is, yet)
        self.cluster.start()
        log.info("node %s: clustering on (lease_ttl %.1f s, node_grace %.1f s)",
                 self.cluster.name, self.cluster.lease_ttl, self.cluster.node_grace,
                 extra={"action": "cluster.start", "instance": None,
                        "node": self.cluster.name})

    def _start_http(self, cfg):
        """The HTTP API with the configured token, else the generated one (created at the
        first start, 0600, in the state directory: the CLI reads it with ``-c``)."""
        from supervisor.config.token import api_token
        from supervisor.http import HttpApi

        token, path = api_token(cfg, create=True)
        logformat.register_secret(token)
        self.http = HttpApi(self.supervisor, listen=cfg.http.address, token=token,
                            max_body=cfg.http.max_body,
                            token_for_reads=cfg.http.token_for_reads,
                            allowed_hosts=cfg.http.allowed_hosts,
                            handler_modules=cfg.security.handler_modules)
        try:
            self.http.start()
        except OSError as exc:
            raise OSError(exc.errno, "[http] listen = %s:%d: %s" % (
                *cfg.http.address, exc.strerror or exc)) from None
        log.info("HTTP API token: %s", path or "from [http] token (the config or "
                 "PGVISOR_HTTP_TOKEN)",
                 extra={"action": "http.token", "instance": None, "token_file": path})

    def shutdown(self):
        """Drain (see the module docstring) and stop everything; return 0. Blocks."""
        self.notifier.notify("STOPPING=1", "STATUS=draining")
        if self.watchdog is not None:
            self.watchdog.hub_only()  # the actor stops before the process: bounded by grace
        grace = self.supervisor.shutdown_grace
        log.info("draining: listeners stop, instances get %.1f s to work off their memory "
                 "queues and finish their handlers", grace,
                 extra={"action": "service.drain", "instance": None})
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.supervisor.pause()  # a drained instance must not be started again
        left = self.drain(grace)
        if left:
            log.warning("drain time over with work left: %s", ", ".join(
                "%s=%d" % item for item in sorted(left.items())),
                extra={"action": "service.drain_timeout", "instance": None})
        self.supervisor.stop(timeout=grace)
        self._stop_cluster()
        self._stop_parts()
        log.info("pgvisor stopped", extra={"action": "service.stop", "instance": None})
        return 0

    def drain(self, timeout):
        """Drain every instance side by side (each within ``timeout`` seconds); return
        ``{name: dropped}`` of those that dropped notifications or had to be killed."""
        instances = [self.supervisor.instance(name) for name in self.supervisor.status()]
        instances = [i for i in instances if i is not None]
        jobs = [(instance, instance.alive, gevent.spawn(instance.drain, timeout))
                for instance in instances]
        gevent.joinall([job for _, _, job in jobs], timeout=timeout + self.drain_extra_time)
        left = {}
        for instance, was_alive, job in jobs:
            dropped = job.value if job.successful() else None
            if dropped is None:
                job.kill(block=False)  # did not finish (or failed): the stop takes over
                left[instance.name] = instance.queue.qsize()
            elif dropped or (was_alive and instance.exit == "abnormal"):
                left[instance.name] = dropped
        return left

    def _stop_cluster(self):
        """Leave the cluster once nothing runs here: the others take over at once."""
        if self.cluster is not None:
            self.cluster.stop(timeout=self.http_stop_timeout)
            self.cluster = None

    def _stop_parts(self):
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.supervisor is not None and self.supervisor.running:
            self.supervisor.stop(timeout=self.config.supervisor.shutdown_grace)
        self._stop_cluster()
        if self.http is not None:
            self.http.stop(self.http_stop_timeout)
        if self.registry is not None:
            self.registry.close()
        self.notifier.close()

    # -- reload -----------------------------------------------------------------------------
    def reload(self):
        """SIGHUP: reload the config (apply what can change live, report what needs a
        restart; an invalid file changes nothing) and the registry. Returns True if the
        config was valid. Blocks the calling greenlet for file I/O and up to
        ``reload_timeout`` for the registry."""
        self.notifier.notify("RELOADING=1", "MONOTONIC_USEC=%d" % (time.monotonic() * 1e6))
        ok = True
        if self.load_config is not None:
            try:
                new = self.load_config()
            except InvalidConfigurationException as exc:
                ok = False
                for line in getattr(exc, "problems", [str(exc)]):
                    log.error("config reload rejected, the running config stays: %s", line,
                              extra={"action": "config.reload_rejected", "instance": None})
            else:
                for secret in new.secrets():
                    logformat.register_secret(secret)
                apply_changes(self, config_changes(self.config, new), new)
                self.config = new
        outcome = self.supervisor.reload_registry()
        outcome.join(self.reload_timeout)
        log.info("reloaded%s; registry %s", "" if ok else " (config rejected)",
                 "changed" if outcome.value else "unchanged or invalid",
                 extra={"action": "service.reload", "instance": None})
        self.notifier.notify("READY=1")
        return ok

    def _registry_changed(self, names):
        """Watcher callback (own greenlet): the registry file was written."""
        self.supervisor.reload_registry()

    # -- signals and systemd ----------------------------------------------------------------
    def _install_signals(self):
        self._signals = [gevent.signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM"),
                         gevent.signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT"),
                         gevent.signal_handler(signal.SIGHUP, self._on_hup)]

    def _cancel_signals(self):
        for handle in self._signals:
            handle.cancel()
        self._signals = []

    def _on_stop_signal(self, name):
        if self._stop_requested.is_set():
            self._abort.set()
            return
        log.info("%s: shutting down (send it again to exit at once)", name,
                 extra={"action": "service.signal", "instance": None, "signal": name})
        self._stop_requested.set()

    def _on_hup(self):
        if self._stop_requested.is_set() or self.supervisor is None:
            return
        log.info("SIGHUP: reloading the config and the registry",
                 extra={"action": "service.signal", "instance": None, "signal": "SIGHUP"})
        try:
            self.reload()
        except Exception:  # a signal greenlet's edge: never let a reload bug kill the hub
            log.exception("reload failed", extra={"action": "service.reload_failed",
                                                  "instance": None})

