"""Child of tests/integration/test_dns_stall.py, run inside a private network namespace
whose resolv.conf names 127.0.0.1 (``ip netns exec`` bind-mounts it): it plays the DNS
server that never answers, then connects to a host *name* for a few seconds under a
HubHeartbeat and prints one JSON line with the worst stall of the hub."""
import json
import socket
import sys
import time


def _silent_dns_server():
    """UDP and TCP port 53 bound and never answered: queries wait for the resolver's
    timeout, exactly like a resolver that is down behind a firewall dropping packets."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 53))
    tcp.listen(16)
    return udp, tcp


def main(host, seconds):
    server = _silent_dns_server()
    started = time.monotonic()
    try:
        socket.getaddrinfo(host, 5432)  # the control: the blocking call really blocks
        resolved = True
    except OSError:
        resolved = False
    blocking_lookup = time.monotonic() - started

    import gevent

    from instances.connectors import PostgresConnector
    from supervisor.monitor import DatabaseMonitor
    from supervisor.testing import HubHeartbeat

    errors = []
    states = []
    connector = PostgresConnector("host=%s dbname=app connect_timeout=1" % host)
    monitor = DatabaseMonitor("host=%s dbname=app" % host, states.append,
                              probe_interval=0.2, probe_timeout=1.0)
    beat = HubHeartbeat(0.005).start()
    gevent.sleep(0.05)  # the heartbeat ticks before anything can block
    monitor.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            connector.execute("SELECT 1")
        except Exception as error:  # noqa: BLE001 -- reported to the parent
            errors.append("%s: %s" % (type(error).__name__, error))
        gevent.sleep(0.02)  # between attempts, as a reconnect loop waits (and beats)
    monitor.stop()
    stall = beat.stop()
    print(json.dumps({"blocking_lookup": blocking_lookup, "resolved": resolved,
                      "max_stall": stall, "ticks": beat.ticks, "errors": errors,
                      "monitor_probes": monitor.probes,
                      "monitor_states": [s.up for s in states]}))
    del server


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
