"""File watching: tells the hub, debounced, when named files in a directory change.

The only module that imports watchdog. Used for the failover files in ``watch_path``
(``standby.signal`` and friends: an event triggers an immediate role check), for the
registry file (hand edits: watch its directory for one name) and for spool ``incoming/``
directories (``names=None``: every file).

Threads and greenlets::

    observer thread (a real OS thread, its own gevent ThreadPool of size 1)
      watchdog Observer + emitter  --basenames-->  hub.loop.run_callback_threadsafe
    hub thread (the thread that called start())
      _collect (hub callback) --first event--> delivery greenlet: sleep(debounce),
      callback(frozenset(names)), again while more names arrived meanwhile

Unpatched, watchdog's observer and emitter are real threads started from the observer
thread. Under gevent monkey-patching ``threading.Thread`` makes greenlets, so watchdog's
"threads" become greenlets on the observer thread's own hub: either way nothing of
watchdog runs on, or blocks, the hub thread. watchdog's event queue (``SkipRepeatsQueue``)
breaks when ``queue`` is patched (gevent's Queue has ``maxsize=None``), so the observer
gets a plain ``queue.Queue`` (patched or not, it matches the threading in use).
"""
import logging
import os
import queue

import gevent
import gevent.event
import gevent.monkey
import gevent.socket
from gevent.threadpool import ThreadPool
from watchdog import events
from watchdog.observers import Observer

from instances.exceptions import InvalidConfigurationException

log = logging.getLogger(__name__)

#: The real OS thread id, also under monkey-patching (threading.get_ident is per greenlet).
real_thread_ident = gevent.monkey.get_original("_thread", "get_ident")

#: watchdog event classes that mean "the file changed" (opened / closed-without-write are
#: left out: reading the registry must not look like editing it).
_FILE_EVENTS = (
    events.FileCreatedEvent, events.FileDeletedEvent, events.FileModifiedEvent,
    events.FileMovedEvent, events.FileClosedEvent, events.FileAttribEvent,
)


class _Observer(Observer):
    """watchdog's platform observer with a plain ``queue.Queue`` as its event queue."""

    def __init__(self):
        super().__init__()
        self._plain_queue = queue.Queue()

    @property
    def event_queue(self):
        return self._plain_queue


class _Handler(events.FileSystemEventHandler):
    """Runs in the observer thread: filters events and hands basenames over."""

    def __init__(self, names, deliver):
        super().__init__()
        self.names = names
        self.deliver = deliver

    def on_any_event(self, event):
        if event.is_directory or not isinstance(event, _FILE_EVENTS):
            return
        paths = (event.src_path, getattr(event, "dest_path", None))
        seen = {os.path.basename(os.fsdecode(path)) for path in paths if path}
        if self.names is not None:
            seen &= self.names
        if seen:
            self.deliver(frozenset(seen))


class FileWatcher:
    """Watch directory ``path`` (not recursive) for changes to files named in ``names``
    (None: any file) and call ``callback(frozenset_of_basenames)``.

    A file counts when it is created, modified, written and closed, deleted, has its
    attributes changed, or is renamed from or *to* a watched name. Events within
    ``debounce`` seconds of the first one are merged into one call. The callback runs in
    its own greenlet on the hub of the thread that called :meth:`start`; calls never
    overlap; an exception it raises is logged and watching goes on. Keep it short (put a
    request on the supervisor's queue).

    Raises InvalidConfigurationException naming ``field`` and ``path`` when ``path`` is
    not an existing directory (at construction and again at start).
    """

    #: Seconds events are collected after the first one before the callback runs.
    debounce = 0.2
    #: Seconds start() waits for the observer thread to be watching.
    start_timeout = 5.0
    #: Seconds stop() waits for the observer thread to stop its observer and finish.
    stop_timeout = 5.0

    def __init__(self, path, names, callback, debounce=None, field="watch_path"):
        self.path = os.fspath(path)
        self.names = None if names is None else frozenset(names)
        self.callback = callback
        self.field = field
        if debounce is not None:
            self.debounce = debounce
        self.observer_thread_ident = None  # the real OS thread id, once started
        self._check_path()
        self._pool = self._result = self._delivery = self._loop = None
        self._stop_r = self._stop_w = None
        self._pending = set()
        self._running = False

    @classmethod
    def for_file(cls, path, callback, debounce=None, field="path"):
        """Watch one file by watching its directory for its name (survives the file being
        replaced by an atomic rename, unlike a watch on the file itself)."""
        path = os.path.abspath(os.fspath(path))
        return cls(os.path.dirname(path), {os.path.basename(path)}, callback,
                   debounce=debounce, field=field)

    def _check_path(self):
        if not os.path.isdir(self.path):
            raise InvalidConfigurationException(
                "%s=%r does not exist or is not a directory" % (self.field, self.path),
                self.field, self.path)

    @property
    def running(self):
        """True between start() and stop()."""
        return self._running

    @property
    def pending(self):
        """Names seen and not yet handed to the callback (the debounce window)."""
        return frozenset(self._pending)

    def start(self):
        """Start the observer thread; return once it watches (blocks the calling greenlet
        cooperatively, up to ``start_timeout``). Raises InvalidConfigurationException for
        a missing directory, or the observer's error (e.g. OSError: inotify limits)."""
        if self._running:
            return
        self._check_path()
        self._loop = gevent.get_hub().loop
        self._stop_r, self._stop_w = os.pipe()
        started = gevent.event.AsyncResult()
        self._running = True  # events may arrive as soon as the observer runs
        self._pool = ThreadPool(1)
        self._result = self._pool.spawn(self._observe, started)
        try:
            self.observer_thread_ident = started.get(timeout=self.start_timeout)
        except BaseException:
            self._running = False
            self._shutdown_thread()
            raise
        log.info("watching %s for %s", self.path,
                 "any file" if self.names is None else ", ".join(sorted(self.names)),
                 extra={"action": "watch.start", "path": self.path})

    def _observe(self, started):
        """The observer thread: run watchdog until the stop pipe is readable."""
        report = self._loop.run_callback_threadsafe
        observer = _Observer()
        try:
            observer.schedule(_Handler(self.names, self._from_observer), self.path,
                              recursive=False, event_filter=list(_FILE_EVENTS))
            observer.start()
        except BaseException as exc:  # noqa: B036 -- handed to start() in the hub thread
            report(started.set_exception, exc)
            return
        report(started.set, real_thread_ident())
        try:
            gevent.socket.wait_read(self._stop_r)  # this thread's own hub, never the caller's
        finally:
            observer.stop()
            observer.join(self.stop_timeout)

    def _from_observer(self, names):
        """Observer thread: hand names to the hub thread (thread-safe, never blocks)."""
        self._loop.run_callback_threadsafe(self._collect, names)

    def _collect(self, names):
        """Hub callback (must not block or raise): add names, start delivery if idle."""
        if not self._running:
            return
        self._pending.update(names)
        if self._delivery is None:
            self._delivery = gevent.spawn(self._deliver)

    def _deliver(self):
        """Delivery greenlet: debounce, call back, repeat while names keep arriving."""
        try:
            while self._pending and self._running:
                gevent.sleep(self.debounce)
                names, self._pending = frozenset(self._pending), set()
                log.debug("files changed in %s: %s", self.path, ", ".join(sorted(names)),
                          extra={"action": "watch.event", "path": self.path})
                try:
                    self.callback(names)
                except Exception:
                    log.exception("watch callback failed for %s", self.path,
                                  extra={"action": "watch.callback_failed", "path": self.path})
        finally:
            self._delivery = None

    def stop(self, timeout=None):
        """Stop watching: pending names are dropped, the observer is stopped and joined in
        its thread, and the thread ends. Blocks the calling greenlet cooperatively, up to
        ``timeout`` (default ``stop_timeout``) seconds; logs a warning if it takes longer.
        """
        if self._pool is None:
            return
        self._running = False
        self._pending.clear()
        if self._delivery is not None and self._delivery is not gevent.getcurrent():
            self._delivery.kill(block=False)
        self._shutdown_thread(self.stop_timeout if timeout is None else timeout)
        log.info("stopped watching %s", self.path,
                 extra={"action": "watch.stop", "path": self.path})

    def _shutdown_thread(self, timeout=None):
        os.write(self._stop_w, b"x")
        finished = True
        try:
            self._result.get(timeout=timeout or self.stop_timeout)
        except gevent.Timeout:
            finished = False
            log.warning("observer thread for %s did not stop within %.1f s", self.path,
                        timeout or self.stop_timeout,
                        extra={"action": "watch.stop_timeout", "path": self.path})
        except Exception:
            log.exception("observer thread for %s failed", self.path,
                          extra={"action": "watch.observer_failed", "path": self.path})
        self._pool.kill()
        os.close(self._stop_w)
        if finished:  # the thread may still read it otherwise
            os.close(self._stop_r)
        self._pool = self._result = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def __repr__(self):
        return "<FileWatcher %s %s%s>" % (
            self.path, "*" if self.names is None else sorted(self.names),
            " running" if self._running else "")
