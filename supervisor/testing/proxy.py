"""FaultProxy: a TCP proxy in front of a server that injects network faults on demand.

Each accepted connection gets an upstream connection and two pump greenlets (one per
direction) that read a chunk, pass the *gate*, wait the configured delay and send it on.

- :meth:`~FaultProxy.blackhole` closes the gate: connections stay open, nothing (no data,
  no close) crosses in either direction, and new connections are accepted but not forwarded
  -- the silent half-open network that kills LISTEN connections unnoticed. Note: TCP
  keepalive probes are answered by the proxy's own kernel, so only application-level
  timeouts notice this blackhole, never keepalives.
- :meth:`~FaultProxy.reset` cuts every current connection with an RST on both sides
  (``SO_LINGER`` 0); new connections work as before.
- :meth:`~FaultProxy.delay` adds latency to every chunk; :meth:`~FaultProxy.heal` opens the
  gate and removes the delay. Data held in a blackhole is delivered after heal, as TCP
  retransmission would.
- :meth:`~FaultProxy.swallow_notifications` drops every NotificationResponse (``A``)
  message the server sends while queries are still answered: a pooler or proxy that lost
  the LISTEN registration, which only a NOTIFY that must come back can notice. The
  server's stream is framed by message for that (from the start of each connection: an
  SSL or GSS encryption request answered ``N`` is followed; an encrypted connection is
  passed through unframed, its notifications included). heal() stops the swallowing.

Everything runs in greenlets on gevent sockets: works without monkey-patching, never blocks
the hub. Control methods return at once and may be called from any greenlet of the hub's
thread.
"""
import socket
import struct

import gevent
import gevent.event
from gevent import socket as gsocket
from gevent.server import StreamServer

_RST_LINGER = struct.pack("ii", 1, 0)
#: SSLRequest and GSSENCRequest: an 8-byte packet the server answers with ONE byte.
_ENCRYPTION_REQUESTS = (struct.pack("!ii", 8, 80877103), struct.pack("!ii", 8, 80877104))


class _ServerFramer:
    """Cuts the server's byte stream into protocol messages, so that some can be dropped.

    ``answers`` counts the one-byte answers to encryption requests still to come (the
    client's pump raises it); after an ``S`` or ``G`` answer the rest is encrypted and
    passed through as it is."""

    def __init__(self):
        self.answers = 0
        self.passthrough = False
        self._buffer = b""

    def feed(self, data, drop):
        """The bytes of ``data`` to forward; whole messages only, those of type ``drop``
        (a byte string, or None: none) left out. Returns (bytes, messages dropped)."""
        if self.passthrough:
            return data, 0
        buffer, start, out, dropped = self._buffer + data, 0, [], 0
        while start < len(buffer):
            if self.answers:
                self.answers -= 1
                answer = buffer[start:start + 1]
                start += 1
                out.append(answer)
                if answer in (b"S", b"G"):
                    self.passthrough = True
                    out.append(buffer[start:])
                    start = len(buffer)
                continue
            if len(buffer) - start < 5:
                break
            end = start + 1 + int.from_bytes(buffer[start + 1:start + 5], "big")
            if end > len(buffer):
                break
            if drop is not None and buffer[start:start + 1] == drop:
                dropped += 1
            else:
                out.append(buffer[start:end])
            start = end
        self._buffer = buffer[start:]
        return b"".join(out), dropped


class _Link:
    """One proxied connection: its two sockets and the greenlets serving it."""

    def __init__(self, client):
        self.client = client
        self.upstream = None
        self.greenlets = [gevent.getcurrent()]
        self.framer = _ServerFramer()
        self.starting = True  # the client has not sent its startup message yet

    def sockets(self):
        return [sock for sock in (self.client, self.upstream) if sock is not None]

    def abort(self):
        """Close both sockets with an RST and kill the greenlets (never raises)."""
        for sock in self.sockets():
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
            except OSError:
                pass
            sock.close()
        current = gevent.getcurrent()
        gevent.killall([g for g in self.greenlets if g is not current], block=False)


class FaultProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 (a free port) to ``target_host:target_port``.

    Use ``start()``/``stop()`` or ``with FaultProxy(port) as proxy:``.
    """

    #: Bytes read per chunk from either side.
    chunk_size = 65536
    #: Seconds allowed for connecting to the target.
    connect_timeout = 5.0
    #: Address the proxy listens on.
    listen_host = "127.0.0.1"

    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self._server = StreamServer((self.listen_host, 0), self._handle)
        self._open = gevent.event.Event()  # the gate: set while forwarding
        self._open.set()
        self._delay = 0.0
        self._links = set()
        self._swallow = False
        #: NotificationResponse messages dropped by :meth:`swallow_notifications`.
        self.swallowed = 0

    @property
    def port(self):
        """The port the proxy listens on (after start())."""
        return self._server.server_port

    @property
    def host(self):
        """The address the proxy listens on."""
        return self.listen_host

    @property
    def connections(self):
        """How many client connections are currently open through the proxy."""
        return len(self._links)

    def start(self):
        """Start listening; returns self. Never blocks."""
        self._server.start()
        return self

    def stop(self):
        """Stop listening and cut every connection. Idempotent."""
        self._server.stop(timeout=0)
        self.reset()

    def dsn_for(self, cluster, dbname="postgres", user=None, password=None):
        """A libpq DSN reaching ``cluster``'s database ``dbname`` through this proxy."""
        return cluster.dsn_for(dbname, tcp=True, user=user, password=password, port=self.port)

    def blackhole(self):
        """Forward nothing in either direction until heal(); connections stay open."""
        self._open.clear()

    def reset(self):
        """Cut all current connections abruptly (RST to both peers); returns how many."""
        links, self._links = list(self._links), set()
        for link in links:
            link.abort()
        return len(links)

    def delay(self, ms):
        """Delay every forwarded chunk by ``ms`` milliseconds (0 removes the delay)."""
        if ms < 0:
            raise ValueError("delay must be >= 0 ms, not %r" % (ms,))
        self._delay = ms / 1000.0

    def swallow_notifications(self):
        """Drop every NotificationResponse from the server until heal(); everything else
        (query answers included) is forwarded: LISTEN looks fine and delivers nothing."""
        self._swallow = True

    def heal(self):
        """Back to plain forwarding: open the gate (held data flows), remove the delay,
        stop swallowing notifications."""
        self._delay = 0.0
        self._swallow = False
        self._open.set()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def __repr__(self):
        state = "blackhole" if not self._open.is_set() else "delay %gs" % self._delay \
            if self._delay else "swallowing notifications" if self._swallow else "forwarding"
        return "<FaultProxy 127.0.0.1:%s -> %s:%s %s>" % (self.port, self.target[0],
                                                          self.target[1], state)

    # -- greenlets ----------------------------------------------------------------------

    def _handle(self, client, _address):
        """Serve one client connection (a StreamServer handler greenlet; never raises)."""
        link = _Link(client)
        self._links.add(link)
        try:
            self._open.wait()  # a blackhole also swallows new connections
            link.upstream = gsocket.create_connection(self.target, self.connect_timeout)
            link.upstream.settimeout(None)
            link.greenlets += [gevent.spawn(self._pump, client, link.upstream, link, False),
                               gevent.spawn(self._pump, link.upstream, client, link, True)]
            gevent.joinall(link.greenlets[1:], count=1)  # one side ended: end both
        except OSError:
            pass
        finally:
            self._links.discard(link)
            for sock in link.sockets():
                sock.close()
            gevent.killall(link.greenlets[1:], block=False)

    def _pump(self, source, sink, link, from_server):
        """Copy ``source`` to ``sink`` through the gate and the delay until EOF or error
        (the server's side framed by message, see :class:`_ServerFramer`)."""
        try:
            while True:
                data = source.recv(self.chunk_size)
                if self._delay:
                    gevent.sleep(self._delay)
                self._open.wait()  # held here while blackholed, EOF included
                if not data:
                    return
                if from_server:
                    data, dropped = link.framer.feed(data, b"A" if self._swallow else None)
                    self.swallowed += dropped
                elif link.starting:
                    self._watch_startup(link, data)
                if data:
                    sink.sendall(data)
        except OSError:
            return

    @staticmethod
    def _watch_startup(link, data):
        """Count the client's encryption requests (each answered by one byte); its
        startup message ends the negotiation."""
        if data[:8] in _ENCRYPTION_REQUESTS:
            link.framer.answers += 1
        else:
            link.starting = False
