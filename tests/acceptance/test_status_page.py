"""The status page (``GET /``) in a real headless Chromium against the real service and a
real Postgres: it shows the instances and refreshes by itself, it is read-only until the
token is entered, it acts with the token, and text from instances is never run as HTML."""
import os

import pytest

from instances import InstanceSpec, Registry
from supervisor.testing import wait_for
from tests.acceptance import status_screenshot
from tests.acceptance.browser import Chromium
from tests.acceptance.service_process import environ
from tests.acceptance.status_screenshot import notify

HANDLERS = "tests.acceptance.page_handlers"
XSS_ERROR = ('<script>window.__xss = "script"</script>"><img src=x '
             'onerror="window.__xss = \'img\'; alert(1)">')
XSS_CHANNEL = '"><img src=x onerror=window.__xss=1>'


@pytest.fixture(scope="module")
def chromium():
    browser = Chromium()
    yield browser
    browser.close()


def start_service(directory, dsn, *specs, env=None):
    """A running service with ``specs`` registered and an API token (``svc.token``)."""
    svc = status_screenshot.service(directory, dsn, env=env)
    registry = Registry(svc.registry, resolve=False)
    for spec in specs:
        registry.add(spec)
    return svc.start()


def spec(name, handler="idle", **fields):
    return InstanceSpec(name=name, channels=fields.pop("channels", [name + "_ch"]),
                        handler="%s:%s" % (HANDLERS, handler), resolve=False, **fields)


@pytest.mark.timeout(120)
def test_page_shows_instances_and_a_kill_raises_the_restart_count_without_a_reload(
        chromium, pg_dsn, tmp_path):
    svc = start_service(tmp_path, pg_dsn, spec("river"), spec("victim", "kill"))
    try:
        svc.wait_state("river", "running")
        svc.wait_state("victim", "running")
        chromium.driver.get(svc.url + "/")
        chromium.wait_cell("river", "state", "running")
        chromium.wait_cell("victim", "state", "running")
        assert chromium.cell("victim", "restarts") == "0"
        facts = chromium.driver.find_element("id", "database").text
        assert "up" in facts and "primary" in facts, facts
        notifiers = chromium.driver.find_element("id", "notifiers-section")
        chromium.wait(lambda d: notifiers.is_displayed() and "victim_ch" in notifiers.text,
                      "the shared LISTEN connection with its channels")
        assert "river_ch" in notifiers.text and "password" not in notifiers.text
        # not a cluster: no Nodes table, no node under the names
        assert not chromium.find("#nodes-section").is_displayed()
        assert not chromium.driver.find_elements("css selector", "td.name div.node")
        chromium.driver.execute_script("window.__same_page = true")

        notify(pg_dsn, "victim_ch", "victim")  # its handler kills it, as a crash would
        chromium.wait_cell("victim", "restarts", "1")
        chromium.wait_cell("victim", "state", "running")
        assert chromium.driver.execute_script("return window.__same_page") is True
        assert chromium.cell("river", "restarts") == "0"
        assert svc.status()["victim"]["restarts"] == 1
        events = chromium.driver.find_element("id", "events").text
        assert "river" in events and "victim" in events, events
    finally:
        svc.stop()


@pytest.mark.timeout(120)
def test_page_is_read_only_without_the_token_and_acts_with_it(chromium, pg_dsn, tmp_path):
    svc = start_service(tmp_path, pg_dsn, spec("river"), spec("spare", enabled=False))
    try:
        svc.wait_state("river", "running")
        svc.wait_state("spare", "disabled")
        chromium.driver.get(svc.url + "/")
        chromium.wait_cell("river", "state", "running")
        chromium.wait_refreshes(1)
        assert chromium.action_buttons() == []
        assert "read-only" in chromium.driver.find_element("id", "mode").text

        chromium.enter_token("not-the-token")
        chromium.wait(lambda d: chromium.action_buttons(), "action buttons once a token is set")
        chromium.click("river", "restart")
        chromium.wait(lambda d: chromium.outcomes(), "the outcome of the refused restart")
        assert "restart river" in chromium.outcomes()[0] and "401" in chromium.outcomes()[0]
        chromium.wait(lambda d: not chromium.action_buttons(), "read-only again after a 401")
        assert svc.status()["river"]["restarts"] == 0

        chromium.enter_token(svc.token)
        chromium.wait(lambda d: chromium.action_buttons(), "action buttons with the token")
        chromium.click("river", "restart")
        chromium.wait(lambda d: len(chromium.outcomes()) == 2, "the outcome of the restart")
        assert chromium.outcomes()[0].endswith("restart river: restarted"), chromium.outcomes()
        chromium.wait_cell("river", "restarts", "1")
        assert svc.status()["river"]["restarts"] == 1

        assert {action for name, action in chromium.action_buttons() if name == "spare"} == {
            "enable", "restart", "verify", "shutdown"}
        chromium.click("spare", "enable")
        chromium.wait(lambda d: len(chromium.outcomes()) == 3, "the outcome of the enable")
        assert "enable spare: enabled (registry version" in chromium.outcomes()[0]
        chromium.wait_cell("spare", "state", "running")
        assert svc.status()["spare"]["enabled"] is True
        chromium.click("spare", "shutdown")
        chromium.wait(lambda d: len(chromium.outcomes()) == 4, "the outcome of the shutdown")
        assert chromium.outcomes()[0].endswith("shutdown spare: stopped"), chromium.outcomes()
        chromium.wait_cell("spare", "state", "stopped")

        chromium.driver.refresh()  # the token is kept for the tab
        chromium.wait_cell("river", "state", "running")
        chromium.wait(lambda d: chromium.action_buttons(), "action buttons after a reload")
    finally:
        svc.stop()


@pytest.mark.timeout(120)
def test_markup_in_errors_and_channels_is_shown_as_text_and_never_run(
        chromium, pg_dsn, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    module = "pgvisor_xss_%d" % os.getpid()
    (code / (module + ".py")).write_text("raise ImportError(%r)\n" % XSS_ERROR)
    spool = tmp_path / "spool"
    svc = start_service(
        tmp_path, pg_dsn,
        InstanceSpec(name="parked", channels=["parked_ch"], handler=module + ":handle",
                     resolve=False),
        spec("failing", "fail", channels=[XSS_CHANNEL], queue={"spool": str(spool)}),
        env={"PYTHONPATH": environ(tmp_path)["PYTHONPATH"] + os.pathsep + str(code)})
    try:
        svc.wait_state("parked", "disabled_by_supervisor")
        svc.wait_state("failing", "running")
        notify(pg_dsn, XSS_CHANNEL, XSS_ERROR)  # its handler raises it: the last error
        wait_for(lambda: svc.status()["failing"]["spool_errors"] == 1, 30, 0.05,
                 "the failed message in the spool's errors/")
        chromium.driver.get(svc.url + "/")
        chromium.wait_cell("failing", "spool-errors", "1")
        chromium.wait_refreshes(2)  # rendered again from fresh answers, not only once

        assert chromium.driver.execute_script("return window.__xss") is None
        assert chromium.driver.find_elements("tag name", "img") == []
        scripts = chromium.driver.find_elements("tag name", "script")
        assert [s.get_attribute("src") for s in scripts] == [svc.url + "/static/status.js"]
        assert XSS_ERROR in chromium.row_text("parked")
        failing = chromium.row_text("failing")
        assert repr(RuntimeError(XSS_ERROR)) in failing and XSS_CHANNEL in failing, failing
        assert XSS_ERROR in chromium.driver.find_element("id", "events").get_attribute(
            "textContent")

        cells = (("parked", "state"), ("failing", "last-error"))
        for name, column in cells:
            chromium.expand(name, column)
        chromium.wait(lambda d: all(chromium.expanded(name, column) for name, column in cells),
                      "the full texts once expanded")
        chromium.wait_refreshes(1)  # they stay expanded across a refresh
        full = chromium.expanded("parked", "state")
        assert full is not None and XSS_ERROR in full
        assert chromium.driver.execute_script("return window.__xss") is None
        assert chromium.driver.find_elements("tag name", "img") == []
    finally:
        svc.stop()


@pytest.mark.timeout(120)
def test_the_docs_screenshot_is_made_by_its_script(chromium, pg_dsn, tmp_path):
    target = tmp_path / "status.png"
    status_screenshot.take(chromium, pg_dsn, tmp_path / "svc", target)
    with open(target, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(target) > 10000  # a rendered page, not a blank image



@pytest.mark.timeout(120)
def test_with_token_for_reads_the_token_typed_once_opens_the_page_by_a_read_cookie(
        chromium, pg_dsn, tmp_path):
    """A browser cannot send a bearer header when it opens a page: with token_for_reads
    GET / is a login form; the token posted once gives an HttpOnly, SameSite=Strict cookie
    for reads, the address never holds the token, and actions still need it typed in."""
    from tests.acceptance.service_process import ServiceProcess
    token = "reads-%d-token" % os.getpid()
    svc = ServiceProcess(tmp_path, {
        "database": {"dsn": pg_dsn},
        "supervisor": {"interval": 3600.0, "probe_interval": 0.2},
        "http": {"token": token, "token_for_reads": True},
    }, env=environ(tmp_path))
    Registry(svc.registry, resolve=False).add(spec("river"))
    svc.start()
    try:
        chromium.driver.get(svc.url + "/")
        field = chromium.driver.find_element("name", "token")
        field.send_keys(token)
        field.submit()
        chromium.wait_cell("river", "state", "running")
        assert chromium.driver.current_url == svc.url + "/"
        [cookie] = [c for c in chromium.driver.get_cookies() if c["name"] == "pgvisor_read"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert token not in cookie["value"]
        assert chromium.action_buttons() == []  # the cookie reads; acting needs the token
        chromium.driver.get(svc.url + "/?token=" + token)  # the link form lands on / too
        chromium.wait_cell("river", "state", "running")
        assert chromium.driver.current_url == svc.url + "/"
        assert token not in svc.log()
    finally:
        chromium.driver.delete_all_cookies()
        svc.stop()


@pytest.mark.timeout(120)
def test_on_a_cluster_the_page_shows_the_nodes_and_where_each_instance_runs(
        chromium, pg_database, tmp_path):
    """Two nodes (separate ``pgvisor run`` processes): n0's page lists both nodes and,
    under each instance's name, the node it is assigned to and that assignment's epoch."""
    from tests.acceptance.cluster_nodes import Nodes

    nodes = Nodes(tmp_path, pg_database, count=2, instances=4).start()
    try:
        nodes.wait_all_running(60)
        assigned = nodes.assignments()
        assert set(assigned.values()) and {n for n, _ in assigned.values()} == {"n0", "n1"}
        chromium.driver.get(nodes["n0"].url + "/")

        def node_line(instance):
            found = chromium.driver.find_elements(
                "css selector", 'tr[data-instance="%s"] td.name div.node' % instance)
            return found[0].text if found else None
        for instance, (node, epoch) in assigned.items():
            expected = "on %s \u00b7 epoch %d" % (node, epoch)
            chromium.wait(lambda d, i=instance, e=expected: chromium.fresh(
                lambda: node_line(i)) == e, "%s shows %r" % (instance, expected))
        section = chromium.find("#nodes-section")
        chromium.wait(lambda d: section.is_displayed() and "n1" in chromium.find(
            "#nodes").text, "the nodes table")
        rows = chromium.fresh(lambda: [r.text.split() for r in chromium.driver.find_elements(
            "css selector", "#nodes tbody tr")])
        assert sorted(row[0] for row in rows) == ["n0", "n1"], rows
        header = chromium.fresh(lambda: chromium.find("#nodes thead").text.split())
        assert header[:3] == ["name", "this", "leader"], header
    finally:
        nodes.stop()
