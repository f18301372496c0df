"""The HTTP control API end to end: a real server on 127.0.0.1, a real Supervisor, a real
Postgres. Every route, authentication, every error class, redaction, metrics, health."""
import http.client
import json
import logging
import socket
import time
import urllib.parse

import gevent.event
import pytest
from prometheus_client.parser import text_string_to_metric_families

from instances import InstanceSpec
from instances.exceptions import InvalidConfigurationException
from instances.spec import check_name
from supervisor import Supervisor
from supervisor.http import HttpApi
from supervisor.testing import wait_for
from tests import handlers

pytestmark = pytest.mark.timeout(60)

TOKEN = "t0ken-for-tests"
SECRET = "s3cretPassw0rd"


def _spec_body(**fields):
    body = {"channels": ["doc_changed"], "handler": "tests.handlers:record"}
    body.update(fields)
    return body


class Client:
    """A tiny JSON client over http.client (one connection per call)."""

    def __init__(self, api, token=None):
        self.host, self.port = api.address[:2]
        self.token = token if token is not None else api.token

    def call(self, method, path, body=None, token=None, headers=None, raw=None):
        """``token``: None: the client's; "": none sent. Mutations say they send JSON."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = dict(headers or {})
        token = token if token is not None else self.token
        if token:
            sent.setdefault("Authorization", "Bearer " + token)
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        if method in ("PUT", "POST", "DELETE"):
            sent.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            text = response.read().decode("utf-8")
        finally:
            conn.close()
        content_type = response.getheader("Content-Type", "")
        parsed = json.loads(text) if content_type.startswith("application/json") else text
        return Reply(response.status, response, parsed, text)


class Reply:
    def __init__(self, status, response, body, text):
        self.status, self.response, self.body, self.text = status, response, body, text

    def header(self, name):
        return self.response.getheader(name)

    def __repr__(self):
        return "<Reply %d %s>" % (self.status, self.text[:300])


@pytest.fixture
def supervisor(registry, pg_dsn):
    sup = Supervisor(registry, pg_dsn, interval=3600, wait_after_db_revived=0.2,
                     probe_interval=0.2, set_as_current=False)
    sup.start()
    wait_for(lambda: sup.database_status()["state"] == "up", 10, message="database never up")
    yield sup
    sup.stop(timeout=5)


def _serve(supervisor, **options):
    api = HttpApi(supervisor, listen=("127.0.0.1", 0), **options)
    api.start()
    return api


@pytest.fixture
def api(supervisor):
    api = _serve(supervisor)
    yield api
    api.stop(timeout=2)


@pytest.fixture
def client(api):
    return Client(api)


@pytest.fixture
def river(registry, supervisor):
    """An instance "river" registered and running."""
    registry.add(InstanceSpec.from_dict(dict(_spec_body(), name="river")))
    supervisor.verify(["river"]).get(timeout=10)
    _wait_state(supervisor, "river", "running")
    return "river"


def _wait_state(supervisor, name, state, timeout=10):
    wait_for(lambda: supervisor.status().get(name, {}).get("state") == state, timeout,
             message="%s never became %s: %r" % (name, state, supervisor.status().get(name)))


def _assert_error(reply, status, field=None):
    assert reply.status == status, reply
    assert set(reply.body) >= {"error", "field", "value"}, reply
    assert "Traceback" not in reply.text
    if field is not None:
        assert reply.body["field"] == field, reply


# -- reads ---------------------------------------------------------------------------------

def test_get_instances_lists_spec_and_status_fields_side_by_side(client, river):
    reply = client.call("GET", "/instances")
    assert reply.status == 200
    [item] = reply.body
    assert item["name"] == "river" and item["handler"] == "tests.handlers:record"
    assert item["state"] == "running" and item["registered"] is True
    assert {"restarts", "received", "backlog", "queue_size", "handler_timeout"} <= set(item)


def test_get_instance_answers_one_object(client, river):
    reply = client.call("GET", "/instances/river")
    assert reply.status == 200
    assert reply.body["name"] == "river" and reply.body["state"] == "running"
    assert reply.body["channels"] == ["doc_changed"]


def test_get_unknown_instance_is_404(client):
    _assert_error(client.call("GET", "/instances/nope"), 404, "name")


@pytest.mark.parametrize("name", ["Upper", "-dash", "a" * 65, "sp%20ace"])
def test_bad_instance_names_are_400_naming_the_name(client, name):
    reply = client.call("GET", "/instances/" + name)
    _assert_error(reply, 400, "name")
    with pytest.raises(InvalidConfigurationException) as by_spec:
        check_name(urllib.parse.unquote(name))
    assert reply.body["error"] == str(by_spec.value)  # one rule: the spec's


def test_status_has_instances_database_and_counters(client, river):
    reply = client.call("GET", "/status")
    assert reply.status == 200
    assert reply.body["running"] is True
    assert reply.body["database"]["state"] == "up"
    assert [i["name"] for i in reply.body["instances"]] == ["river"]
    assert "restarts" in reply.body["counters"]


def test_metrics_parse_as_prometheus_text(client, river):
    reply = client.call("GET", "/metrics")
    assert reply.status == 200
    assert reply.header("Content-Type").startswith("text/plain; version=")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(reply.text) for s in f.samples}
    assert samples[("pgvisor_instance_up", (("instance", "river"),))] == 1
    assert samples[("pgvisor_database_up", ())] == 1
    assert samples[("pgvisor_instances", (("state", "running"),))] == 1
    assert ("pgvisor_restarts_total", (("instance", "river"),)) in samples


def test_health_is_200_when_ready_and_503_when_paused(client, supervisor):
    reply = client.call("GET", "/health")
    assert reply.status == 200 and reply.body["ready"] is True and reply.body["live"] is True
    assert reply.body["state"] == "up" and reply.body["role"] == "primary"
    supervisor.pause()
    try:
        reply = client.call("GET", "/health")
        assert reply.status == 503
        assert reply.body["ready"] is False and reply.body["paused_by"] == "operator"
        live = client.call("GET", "/health?live=1")
        assert live.status == 200 and live.body["live"] is True
    finally:
        supervisor.resume()
    assert client.call("GET", "/health").status == 200


def test_health_liveness_is_503_when_supervisor_stopped(client, supervisor):
    supervisor.stop(timeout=5)
    assert client.call("GET", "/health?live=1").status == 503
    assert client.call("GET", "/health").status == 503


# -- changes -------------------------------------------------------------------------------

def test_put_creates_an_instance_that_starts(client, supervisor, registry):
    reply = client.call("PUT", "/instances/lake", _spec_body(max_concurrency=2))
    assert reply.status == 201, reply
    assert reply.body["name"] == "lake" and reply.body["max_concurrency"] == 2
    assert reply.body["operation"] and reply.body["registry_version"] == registry.version
    assert registry.get("lake").max_concurrency == 2
    wait_for(lambda: client.call("GET", "/instances/lake").body["state"] == "running", 10)
    op = client.call("GET", "/operations/" + reply.body["operation"])
    assert op.status == 200 and op.body["action"] == "verify"


def test_put_replaces_an_existing_instance(client, river, registry):
    registry.update("river", max_concurrency=4)
    reply = client.call("PUT", "/instances/river", _spec_body(name="river", min_concurrency=2,
                                                              max_concurrency=3))
    assert reply.status == 200, reply
    spec = registry.get("river")
    assert (spec.min_concurrency, spec.max_concurrency) == (2, 3)


def test_put_with_omitted_fields_resets_them_to_defaults(client, river, registry):
    registry.update("river", queue_size=5)
    assert client.call("PUT", "/instances/river", _spec_body()).status == 200
    assert registry.get("river").queue_size == 10000


def test_put_invalid_field_is_400_naming_field_and_value_and_changes_nothing(
        client, river, registry):
    version = registry.version
    reply = client.call("PUT", "/instances/river", _spec_body(max_concurrency="lots"))
    _assert_error(reply, 400, "max_concurrency")
    assert reply.body["value"] == "lots"
    assert registry.version == version
    assert registry.get("river").max_concurrency == 1


def test_put_reports_every_problem(client, registry):
    reply = client.call("PUT", "/instances/lake", _spec_body(restart="sometimes", queue_size=0))
    assert reply.status == 400
    assert {p["field"] for p in reply.body["problems"]} == {"restart", "queue_size"}
    assert "lake" not in registry


def test_put_unknown_fields_are_400_naming_them(client, registry):
    reply = client.call("PUT", "/instances/lake", _spec_body(colour="red", size=3))
    assert reply.status == 400
    assert "colour" in reply.body["field"] and "size" in reply.body["field"]
    assert "'colour'" in reply.body["error"]
    assert "lake" not in registry


def test_put_unimportable_handler_is_400(client, registry):
    reply = client.call("PUT", "/instances/lake", _spec_body(handler="tests.handlers:missing"))
    _assert_error(reply, 400, "handler")
    assert "lake" not in registry


def test_put_name_in_body_must_match_path(client, registry):
    reply = client.call("PUT", "/instances/lake", _spec_body(name="sea"))
    _assert_error(reply, 400, "name")
    assert reply.body["value"] == "sea"
    assert len(registry) == 0


def test_put_malformed_json_is_400_with_line_and_column(client, registry):
    reply = client.call("PUT", "/instances/lake", raw=b'{"channels": ["a"],\n  "handler": }',
                        headers={"Content-Type": "application/json"})
    _assert_error(reply, 400)
    assert (reply.body["line"], reply.body["column"]) == (2, 14)
    assert "line 2 column 14" in reply.body["error"]


def test_put_body_that_is_not_an_object_is_400(client):
    _assert_error(client.call("PUT", "/instances/lake", ["not", "an", "object"]), 400, "body")


def test_put_wrong_content_type_is_415(client):
    reply = client.call("PUT", "/instances/lake", raw=b"name=lake",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    _assert_error(reply, 415, "Content-Type")


def test_put_body_over_limit_is_413(supervisor):
    api = _serve(supervisor, max_body=100)
    try:
        reply = Client(api).call("PUT", "/instances/lake", _spec_body(handler="x" * 200))
        _assert_error(reply, 413)
        assert reply.body["limit"] == 100
    finally:
        api.stop(timeout=2)


def test_oversized_body_is_refused_without_reading_it(api):
    """A declared 100 MB body is answered 413 at once and the connection closed: the server
    never waits for (reads) the rest."""
    sock = socket.create_connection(api.address[:2], timeout=10)
    try:
        sock.sendall(b"PUT /instances/lake HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + api.token.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{")
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break  # the server closed the connection
            received += chunk
    finally:
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), received
    assert b"connection: close" in head.lower()
    assert json.loads(body)["limit"] == 65536


def test_chunked_body_over_limit_is_413(supervisor):
    api = _serve(supervisor, max_body=100)
    try:
        conn = http.client.HTTPConnection(*api.address[:2], timeout=10)
        conn.request("PUT", "/instances/lake", body=iter([b"{" + b" " * 80, b" " * 80 + b"}"]),
                     headers={"Content-Type": "application/json",
                              "Authorization": "Bearer " + api.token}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["limit"] == 100
        conn.close()
    finally:
        api.stop(timeout=2)


def test_delete_removes_the_instance_and_stops_it(client, supervisor, registry, river):
    reply = client.call("DELETE", "/instances/river")
    assert reply.status == 200 and reply.body["removed"] is True, reply
    assert "river" not in registry
    wait_for(lambda: "river" not in supervisor.status()
             or supervisor.status()["river"]["state"] == "stopped", 10)


def test_delete_unknown_instance_is_404(client):
    _assert_error(client.call("DELETE", "/instances/nope"), 404)


# -- operations ----------------------------------------------------------------------------

def test_restart_answers_202_with_an_operation_that_completes(client, supervisor, river):
    first = supervisor.instance("river")
    reply = client.call("POST", "/instances/river/restart")
    assert reply.status == 202, reply
    assert reply.body["status"] == "pending" and reply.body["instance"] == "river"
    op_path = "/operations/" + reply.body["operation"]
    done = wait_for(lambda: (lambda r: r.body["status"] == "done" and r)(
        client.call("GET", op_path)), 10)
    assert done.body["result"] == {"river": "restarted"}
    assert supervisor.instance("river") is not first


def test_restart_with_wait_answers_the_outcome(client, river):
    reply = client.call("POST", "/instances/river/restart?wait=1&timeout=10")
    assert reply.status == 200, reply
    assert reply.body["status"] == "done"
    assert reply.body["result"] == {"river": "restarted"}


def test_shutdown_then_verify_with_wait(client, supervisor, river):
    reply = client.call("POST", "/instances/river/shutdown?wait=1")
    assert reply.status == 200 and reply.body["result"] == {"river": "stopped"}, reply
    assert supervisor.status()["river"]["state"] == "stopped"
    reply = client.call("POST", "/instances/river/verify?wait=1")
    assert reply.status == 200 and reply.body["status"] == "done", reply


def test_wait_that_times_out_answers_202_and_the_operation_finishes_later(
        client, registry, supervisor, pg_database):
    """A restart waits for the current notification (shutdown grace): block the handler,
    ask with a short timeout, then let the handler finish."""
    registry.add(InstanceSpec.from_dict(_spec_body(name="slow", handler="tests.handlers:block")))
    _wait_state(supervisor, "slow", "running")
    handlers.blocking["event"] = release = gevent.event.Event()
    try:
        pg_database.execute("SELECT pg_notify('doc_changed', 'hold')")
        wait_for(lambda: any(n.payload == "hold" for n in handlers.seen), 10)
        reply = client.call("POST", "/instances/slow/restart?wait=1&timeout=0.3")
        assert reply.status == 202 and reply.body["status"] == "pending", reply
    finally:
        release.set()
    op_path = "/operations/" + reply.body["operation"]
    wait_for(lambda: client.call("GET", op_path).body["status"] == "done", 10)
    assert client.call("GET", op_path).body["result"] == {"slow": "restarted"}


def test_action_on_unknown_instance_is_404(client):
    _assert_error(client.call("POST", "/instances/nope/restart"), 404, "name")


@pytest.mark.parametrize("query, field", [("wait=maybe", "wait"), ("wait=1&timeout=-1", "timeout"),
                                          ("timeout=soon", "timeout")])
def test_bad_wait_parameters_are_400(client, river, query, field):
    _assert_error(client.call("POST", "/instances/river/restart?" + query), 400, field)


def test_unknown_operation_is_404(client):
    _assert_error(client.call("GET", "/operations/0123abcd"), 404, "operation")
    _assert_error(client.call("GET", "/operations/not-an-id"), 404, "operation")


# -- protocol errors -----------------------------------------------------------------------

def test_wrong_method_is_405_with_allow(client):
    reply = client.call("POST", "/instances")
    _assert_error(reply, 405, "method")
    assert reply.header("Allow") == "GET"
    reply = client.call("PATCH", "/instances/river")
    assert reply.status == 405 and reply.header("Allow") == "DELETE, GET, PUT"


@pytest.mark.parametrize("path", ["/nope", "/static", "/static/nope.js", "/instances/river/explode", "/instances/a/b/c"])
def test_unknown_route_is_404(client, path):
    _assert_error(client.call("GET", path), 404, "path")


def test_unexpected_exception_is_500_with_an_id_in_the_log(client, supervisor, monkeypatch,
                                                           caplog):
    def broken():
        raise RuntimeError("boom password=%s" % SECRET)
    monkeypatch.setattr(supervisor, "status", broken)
    with caplog.at_level(logging.ERROR, logger="supervisor.http"):
        reply = client.call("GET", "/instances")
    assert reply.status == 500
    assert set(reply.body) == {"error", "id"} and reply.body["error"] == "internal error"
    assert "boom" not in reply.text and "Traceback" not in reply.text
    [record] = [r for r in caplog.records if getattr(r, "action", "") == "http.internal_error"]
    assert record.error_id == reply.body["id"] and record.exc_info is not None


# -- authentication ------------------------------------------------------------------------

@pytest.fixture
def secured(supervisor):
    api = _serve(supervisor, token=TOKEN)
    yield Client(api)
    api.stop(timeout=2)


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
def test_mutating_calls_without_the_right_token_are_401(secured, registry, token):
    headers = {} if token is None else {"Authorization": "Bearer " + token}
    for method, path, body in [("PUT", "/instances/lake", _spec_body()),
                               ("DELETE", "/instances/lake", None),
                               ("POST", "/instances/lake/restart", None)]:
        conn = http.client.HTTPConnection(secured.host, secured.port, timeout=10)
        sent = dict(headers, **({"Content-Type": "application/json"} if body else {}))
        conn.request(method, path, body=json.dumps(body) if body else None, headers=sent)
        response = conn.getresponse()
        reply = json.loads(response.read())
        conn.close()
        assert response.status == 401, (method, reply)
        assert reply["field"] == "Authorization"
        assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
    assert "lake" not in registry


def test_right_token_allows_changes_and_reads_stay_open(secured, registry):
    assert secured.call("PUT", "/instances/lake", _spec_body(), token=TOKEN).status == 201
    assert "lake" in registry
    assert secured.call("GET", "/instances/lake").status == 200
    assert secured.call("GET", "/metrics").status == 200
    assert secured.call("DELETE", "/instances/lake", token=TOKEN).status == 200


def test_token_for_reads_protects_gets_but_not_health(supervisor):
    api = _serve(supervisor, token=TOKEN, token_for_reads=True)
    try:
        client = Client(api, token="")
        for path in ("/instances", "/status", "/metrics"):
            _assert_error(client.call("GET", path), 401, "Authorization")
            assert client.call("GET", path, token=TOKEN).status == 200
        assert client.call("GET", "/health").status == 200
    finally:
        api.stop(timeout=2)


@pytest.fixture
def reads_secured(supervisor):
    api = _serve(supervisor, token=TOKEN, token_for_reads=True)
    yield api
    api.stop(timeout=2)


def _cookie_of(reply):
    """``name=value`` of the reply's Set-Cookie, and its attributes (lower case)."""
    first, *attributes = [part.strip() for part in reply.header("Set-Cookie").split(";")]
    return first, {a.lower() for a in attributes}


def test_a_browser_opens_the_page_with_the_token_once_then_reads_by_cookie(reads_secured,
                                                                         caplog):
    """token_for_reads: GET / answers a login form; ?token= (or the form's POST) sets an
    HttpOnly, SameSite=Strict cookie and sends the browser to / without the token; the
    cookie opens reads; the token never reaches the access log."""
    browser = Client(reads_secured, token="")
    login = browser.call("GET", "/")
    assert login.status == 401 and login.header("Content-Type").startswith("text/html")
    assert '<form method="post" action="login"' in login.text
    assert "form-action 'self'" in login.header("Content-Security-Policy")
    with caplog.at_level(logging.INFO, logger="supervisor.http"):
        link = browser.call("GET", "/?token=" + TOKEN)
        form = browser.call("POST", "/login", raw=("token=" + TOKEN).encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    for reply in (link, form):
        assert reply.status == 303 and reply.header("Location") == "./"
        cookie, attributes = _cookie_of(reply)
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        assert TOKEN not in cookie and cookie == "pgvisor_read=" + reads_secured.read_cookie
    logged = " ".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert TOKEN not in logged and "GET / 303" in logged and "POST /login 303" in logged
    with_cookie = {"Cookie": "other=1; " + cookie}
    for path in ("/", "/status", "/instances", "/static/status.js"):
        assert browser.call("GET", path, headers=with_cookie).status == 200, path
    assert browser.call("GET", "/status", headers={"Cookie": "pgvisor_read=forged"}
                        ).status == 401


def test_the_read_cookie_never_authorizes_a_mutation(reads_secured, registry):
    browser = Client(reads_secured, token="")
    cookie, _ = _cookie_of(browser.call("GET", "/?token=" + TOKEN))
    reply = browser.call("PUT", "/instances/lake", _spec_body(), headers={"Cookie": cookie})
    _assert_error(reply, 401, "Authorization")
    _assert_error(browser.call("POST", "/instances/lake/restart", {},
                               headers={"Cookie": cookie}), 401, "Authorization")
    assert "lake" not in registry


def test_a_wrong_token_gets_the_login_page_again_and_no_cookie(reads_secured):
    browser = Client(reads_secured, token="")
    for reply in (browser.call("GET", "/?token=wrong"),
                  browser.call("POST", "/login", raw=b"token=wrong", headers={
                      "Content-Type": "application/x-www-form-urlencoded"})):
        assert reply.status == 401 and "the token given was wrong" in reply.text
        assert reply.header("Set-Cookie") is None
    _assert_error(browser.call("POST", "/login", {"token": TOKEN}), 415, "Content-Type")
    _assert_error(browser.call("GET", "/login"), 405, "method")


def test_without_a_token_a_random_one_guards_every_mutation(supervisor, registry):
    api = _serve(supervisor)
    try:
        assert len(api.token) >= 40 and api.token != _serve.__name__
        anonymous = Client(api, token="")
        reply = anonymous.call("PUT", "/instances/lake", _spec_body())
        _assert_error(reply, 401, "Authorization")
        assert "lake" not in registry
        assert anonymous.call("GET", "/instances").status == 200  # reads stay open
        assert Client(api).call("PUT", "/instances/lake", _spec_body()).status == 201
    finally:
        api.stop(timeout=2)
    assert HttpApi(supervisor).token != api.token  # a fresh one each time


def test_an_empty_token_is_refused(supervisor):
    with pytest.raises(InvalidConfigurationException) as info:
        HttpApi(supervisor, listen=("127.0.0.1", 0), token=" ")
    assert info.value.field == "token" and info.value.value == "***"


# -- redaction and logging -----------------------------------------------------------------

def test_instance_dsn_password_never_appears_in_answers(client, supervisor, pg_dsn):
    dsn = "%s password=%s" % (pg_dsn, SECRET)
    reply = client.call("PUT", "/instances/lake", _spec_body(dsn=dsn))
    assert reply.status == 201, reply
    wait_for(lambda: supervisor.status()["lake"]["state"] == "running", 10)
    answers = [reply.text] + [client.call("GET", p).text
                              for p in ("/instances", "/instances/lake", "/status")]
    for text in answers:
        assert SECRET not in text
    assert "password=***" in json.loads(answers[2])["dsn"]


def test_dict_dsn_password_is_redacted_in_answers_and_errors(client, pg_dsn):
    reply = client.call("PUT", "/instances/lake",
                        _spec_body(dsn={"dbname": "x", "password": SECRET, "port": [1]}))
    assert reply.status == 400 and SECRET not in reply.text, reply
    reply = client.call("PUT", "/instances/lake",
                        _spec_body(enabled=False, dsn={"dbname": "x", "password": SECRET}))
    assert reply.status == 201 and SECRET not in reply.text, reply
    assert reply.body["dsn"]["password"] == "***"
    assert SECRET not in client.call("GET", "/instances/lake").text


def test_known_passwords_are_scrubbed_from_status_text(client, supervisor, river,
                                                       monkeypatch):
    """A second net: a status string quoting a DSN password verbatim is scrubbed."""
    supervisor.dsn = "%s password=%s" % (supervisor.dsn, SECRET)
    real_status = supervisor.status

    def leaky_status():
        status = real_status()
        status["river"]["last_error"] = "could not connect with %s" % SECRET
        return status
    monkeypatch.setattr(supervisor, "status", leaky_status)
    reply = client.call("GET", "/instances/river")
    assert reply.status == 200
    assert SECRET not in reply.text
    assert reply.body["last_error"] == "could not connect with ***"


def test_one_access_log_line_per_request_without_query_or_token(secured, caplog):
    with caplog.at_level(logging.INFO, logger="supervisor.http"):
        secured.call("POST", "/instances/nope/restart?wait=1&secret=" + SECRET, token=TOKEN)
    [record] = [r for r in caplog.records if getattr(r, "action", "") == "http.request"]
    assert (record.method, record.path, record.status) == ("POST", "/instances/nope/restart",
                                                           404)
    assert record.duration >= 0
    assert SECRET not in record.getMessage() and TOKEN not in record.getMessage()


def test_stop_closes_the_listener(supervisor):
    api = _serve(supervisor)
    address = api.address[:2]
    api.stop(timeout=2)
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()


@pytest.mark.timeout(20)
def test_a_silent_client_is_disconnected_after_the_request_timeout(supervisor, monkeypatch):
    monkeypatch.setattr(HttpApi, "request_timeout", 0.3)
    api = _serve(supervisor)
    try:
        with socket.create_connection(api.address[:2], timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes
            started = time.monotonic()
            answer = b""
            while True:  # until the server closes the connection (recv times out at 10 s)
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            assert 0.25 <= time.monotonic() - started < 5  # cut by the timeout, not at once
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
    finally:
        api.stop(timeout=2)


# -- secure defaults: Host, content type, handler modules ------------------------------------

def _raw(api, request):
    """Send ``request`` (bytes) as is; ``(status, headers+body bytes)``."""
    with socket.create_connection(api.address[:2], timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return int(received.split(b" ", 2)[1]), received


@pytest.mark.parametrize("host, status", [
    ("evil.example", 421), ("evil.example:7390", 421), ("127.0.0.1.evil.example", 421),
    ("localhost", 200), ("LOCALHOST:1", 200), ("app.localhost", 200), ("[::1]:7390", 200),
    ("127.0.0.2", 200), ("", 400), ("a b", 400), ("[::1", 400), ("x:port", 400)])
def test_host_must_name_this_server(api, host, status):
    header = b"Host: %s\r\n" % host.encode() if host else b""
    got, received = _raw(api, b"GET /instances HTTP/1.1\r\n" + header +
                         b"Connection: close\r\n\r\n")
    assert got == status, received
    if status != 200:
        assert json.loads(received.partition(b"\r\n\r\n")[2])["field"] == "Host"


def test_allowed_hosts_adds_names_and_star_accepts_any(supervisor):
    api = _serve(supervisor, allowed_hosts=["pgvisor.internal"])
    star = _serve(supervisor, allowed_hosts=["*"])
    try:
        request = b"GET /health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
        assert _raw(api, request % b"pgvisor.internal:80")[0] == 200
        assert _raw(api, request % b"other.internal")[0] == 421
        assert _raw(star, request % b"other.internal")[0] == 200
    finally:
        api.stop(timeout=2)
        star.stop(timeout=2)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_every_mutation_needs_a_json_content_type(client, river, registry, content_type):
    """A cross-site HTML form can only send these types: it never reaches a handler."""
    headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
    first = client.call("POST", "/instances/river/restart", headers=headers)
    _assert_error(first, 415, "Content-Type")
    _assert_error(client.call("DELETE", "/instances/river", headers=headers), 415)
    _assert_error(client.call("PUT", "/instances/lake", raw=b"{}", headers=headers), 415)
    assert "river" in registry and "lake" not in registry


def test_handler_modules_refuse_a_put_outside_them_and_import_nothing(
        supervisor, registry, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    monkeypatch.setenv("POISON_MARKER", str(marker))
    api = _serve(supervisor, handler_modules=["tests.handlers", "myapp."])
    try:
        client = Client(api)
        for handler in ("tests.poison:handle", "subprocess:getoutput", "tests:handlers",
                        "tests.handlersx:record", "myapp:run"):
            reply = client.call("PUT", "/instances/lake", _spec_body(handler=handler))
            _assert_error(reply, 403, "handler")
            assert reply.body["value"] == handler
        assert not marker.exists() and "tests.poison" not in __import__("sys").modules
        assert "lake" not in registry
        assert client.call("PUT", "/instances/lake", _spec_body()).status == 201
    finally:
        api.stop(timeout=2)


def test_unknown_instance_answers_do_not_name_the_registry_file(client, registry):
    for method in ("GET", "DELETE"):
        reply = client.call(method, "/instances/nope")
        assert reply.status == 404, reply
        assert registry.path not in reply.text
        assert "registry" not in reply.body["error"]


@pytest.mark.timeout(30)
def test_a_slowloris_client_is_cut_at_the_request_deadline(supervisor, monkeypatch):
    """Every byte used to reset the idle timer; now the whole request has a deadline."""
    monkeypatch.setattr(HttpApi, "request_timeout", 1.0)
    api = _serve(supervisor)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    try:
        with socket.create_connection(api.address[:2], timeout=10) as sock:
            started = time.monotonic()
            sent = 0
            try:
                for byte in request:
                    sock.sendall(bytes([byte]))
                    sent += 1
                    gevent.sleep(0.05)
                    if time.monotonic() - started > 8:
                        break
                answer = sock.recv(4096)
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
            cut_after = time.monotonic() - started
        assert answer in (b"",) or answer.startswith(b"HTTP/1.1 4"), answer
        assert 0.9 <= cut_after < 8 and sent < len(request), (cut_after, sent)
        assert Client(api).call("GET", "/health").status == 200  # the server is fine
    finally:
        api.stop(timeout=2)


def test_the_access_log_escapes_control_characters(client, caplog):
    """``GET /x%0a...`` used to forge a second log line, unauthenticated."""
    with caplog.at_level(logging.INFO, logger="supervisor.http"):
        client.call("GET", "/x%0a2026-01-01T00:00:00Z%20ERROR%20forged%0d%1b[31m\\")
    [record] = [r for r in caplog.records if getattr(r, "action", "") == "http.request"]
    message = record.getMessage()
    assert "\n" not in message and "\r" not in message and "\x1b" not in message
    assert "\\x0a2026-01-01" in message and "\\x5c" in message


def test_batch_and_order_key_survive_a_get_put_round_trip(client, registry):
    for name, fields in (("bulk", {"batch": 500}),
                         ("keyed", {"order_key": "tests.handlers:record",
                                    "max_concurrency": 4})):
        assert client.call("PUT", "/instances/" + name, _spec_body(**fields)).status == 201
        stored = registry.get(name)
        answer = client.call("GET", "/instances/" + name).body
        assert all(answer[field] == value for field, value in fields.items())
        spec_fields = {f for f in InstanceSpec.__dataclass_fields__}
        body = {k: v for k, v in answer.items() if k in spec_fields}
        assert client.call("PUT", "/instances/" + name, body).status == 200
        assert registry.get(name) == stored


@pytest.mark.parametrize("fields, field", [
    ({"batch": 0}, "batch"), ({"batch": "100"}, "batch"), ({"batch": 10001}, "batch"),
    ({"order_key": "shard"}, "order_key"), ({"order_key": "tests.handlers:missing"}, "order_key"),
    ({"batch": 10, "order_key": "channel"}, "batch,order_key"),
])
def test_bad_batch_or_order_key_is_400_naming_the_field_and_changes_nothing(
        client, registry, fields, field):
    reply = client.call("PUT", "/instances/lake", _spec_body(**fields))
    _assert_error(reply, 400, field)
    assert "lake" not in registry


def test_an_order_key_path_outside_handler_modules_is_refused(supervisor, registry):
    api = _serve(supervisor, handler_modules=["tests.handlers"])
    try:
        reply = Client(api).call("PUT", "/instances/lake", _spec_body(
            order_key="tests.poison:handle", max_concurrency=2))
        _assert_error(reply, 403, "order_key")
        assert reply.body["value"] == "tests.poison:handle" and "lake" not in registry
    finally:
        api.stop(timeout=2)
