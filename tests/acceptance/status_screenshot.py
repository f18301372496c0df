"""The status page screenshot of the docs (docs/_static/status.png): ``make screenshot``.

Runs the real service on a throwaway PostgreSQL with instances in the states an operator
meets (running with traffic, restarted after a crash, parked over a handler that cannot
be imported, disabled), opens the page in headless Chromium with the token entered, and
saves what it shows. The browser tests run :func:`take` too, so the script cannot rot.

    python -m gevent.monkey --module tests.acceptance.status_screenshot [PATH]
"""
import os
import secrets
import sys
import tempfile

import gevent
import gevent.event

from instances import InstanceSpec, Registry
from instances.connectors import PostgresConnector
from tests.acceptance.service_process import ServiceProcess

HANDLERS = "tests.acceptance.page_handlers"
TARGET = os.path.join("docs", "_static", "status.png")


def service(directory, dsn, env=None):
    """A (not yet started) ServiceProcess in ``directory`` with a random API token in a
    0600 token file; the token is ``svc.token``."""
    os.makedirs(directory, exist_ok=True)
    token = secrets.token_hex(16)
    token_file = os.path.join(str(directory), "api.token")
    with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(token + "\n")
    svc = ServiceProcess(directory, {
        "database": {"dsn": dsn},
        "supervisor": {"interval": 3600.0, "probe_interval": 0.2},
        "http": {"token_file": token_file},
    }, env=env)
    svc.token = token
    return svc


def _specs():
    def spec(name, handler, **fields):
        return InstanceSpec(name=name, channels=fields.pop("channels", [name + "_changed"]),
                            handler="%s:%s" % (HANDLERS, handler), resolve=False, **fields)
    return [spec("search-index", "idle", max_concurrency=4),
            spec("audit", "idle", channels=["search-index_changed", "audit_changed"]),
            spec("mailer", "kill"),
            spec("legacy-export", "missing_handler"),
            spec("nightly-report", "idle", enabled=False)]


def notify(dsn, channel, payload):
    """One NOTIFY on ``dsn`` (a connection of its own, closed after)."""
    connector = PostgresConnector(dsn, application_name="page-test")
    try:
        connector.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        connector.disconnect()


def _traffic(dsn, stop):
    """NOTIFY the running instances' channels until ``stop`` is set (processed/s > 0)."""
    connector = PostgresConnector(dsn, application_name="screenshot-traffic")
    try:
        while not stop.is_set():
            connector.execute("SELECT pg_notify('search-index_changed', 'doc'),"
                              " pg_notify('audit_changed', 'doc')")
            gevent.sleep(0.02)
    finally:
        connector.disconnect()


def take(browser, dsn, directory, target):
    """Run the scene in ``directory`` against ``dsn``; save the page as PNG ``target``."""
    svc = service(directory, dsn)
    registry = Registry(svc.registry, resolve=False)
    for spec in _specs():
        registry.add(spec)
    stop = gevent.event.Event()
    svc.start()
    traffic = None
    try:
        for name in ("search-index", "audit", "mailer"):
            svc.wait_state(name, "running")
        svc.wait_state("legacy-export", "disabled_by_supervisor")
        notify(dsn, "mailer_changed", "mailer")  # a crash: restarted by the supervisor
        svc.wait_state("mailer", "running")
        traffic = gevent.spawn(_traffic, dsn, stop)
        browser.driver.get(svc.url + "/")
        browser.wait_cell("mailer", "restarts", "1")
        browser.enter_token(svc.token)
        browser.wait(lambda d: browser.action_buttons(), "action buttons")
        browser.click("audit", "verify")
        browser.wait(lambda d: browser.outcomes(), "the verify's outcome")
        browser.wait_refreshes(2)  # two answers: processed/s is known
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        height = browser.driver.execute_script("return document.body.scrollHeight")
        browser.driver.set_window_size(1400, max(600, min(int(height) + 120, 2000)))
        browser.driver.execute_script(
            "window.scrollTo(0, 0); for (const s of document.querySelectorAll('section'))"
            " s.scrollLeft = 0;")
        browser.wait_refreshes(1)
        assert browser.driver.save_screenshot(str(target)), "no screenshot saved"
    finally:
        stop.set()
        if traffic is not None:
            traffic.join(10)
        svc.stop()


def main(argv=None):
    from supervisor.testing import PostgresCluster
    from tests.acceptance.browser import Chromium

    argv = sys.argv[1:] if argv is None else argv
    target = argv[0] if argv else TARGET
    cluster = PostgresCluster(name="pgvisor-screenshot")
    browser = None
    with tempfile.TemporaryDirectory(prefix="pgvisor-screenshot-") as workdir:
        try:
            cluster.start()
            browser = Chromium()
            take(browser, cluster.dsn, workdir, target)
        finally:
            if browser is not None:
                browser.close()
            cluster.cleanup()
    print("saved %s" % target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
