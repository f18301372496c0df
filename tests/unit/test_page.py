"""The status page's document and files as routes answer them (no browser, no database:
tests/acceptance/test_status_page.py drives the page in Chromium)."""
import dataclasses
import re

import pytest

from instances import InstanceSpec
from supervisor.http import page
from supervisor.http.routes import HttpError, Request, Routes


def get(path):
    handlers, kwargs = Routes(supervisor=None, metrics_registry=None).match(path)
    assert list(handlers) == ["GET"]
    return handlers["GET"](Request("GET", path, "", None, lambda: b""), **kwargs)


def test_root_answers_the_html_document_with_a_strict_content_security_policy():
    answer = get("/")
    assert answer.status == 200 and answer.content_type == "text/html; charset=utf-8"
    headers = dict(answer.headers)
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "'unsafe-inline'" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    html = answer.body.decode("utf-8")
    assert '<script src="static/status.js" defer></script>' in html
    assert '<link rel="stylesheet" href="static/status.css">' in html


def test_the_document_has_no_inline_script_and_no_event_handler_attribute():
    html = page.document().decode("utf-8")
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="static/status.js" defer>']
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere


def test_the_document_tells_the_script_the_refresh_and_the_spec_fields():
    html = page.document().decode("utf-8")
    assert 'data-refresh-ms="2000"' in html
    fields = re.search(r'data-spec-fields="([^"]*)"', html).group(1).split(",")
    assert fields == [f.name for f in dataclasses.fields(InstanceSpec)]


@pytest.mark.parametrize("name, content_type", sorted(page.ASSETS.items()))
def test_static_files_ship_in_the_package_with_their_types(name, content_type):
    answer = get("/static/" + name)
    assert answer.status == 200 and answer.content_type == content_type
    assert len(answer.body) > 1000
    assert dict(answer.headers)["X-Content-Type-Options"] == "nosniff"


def test_the_script_never_writes_markup():
    script = page.asset("status.js")[0].decode("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


@pytest.mark.parametrize("path", ["/static/other.js", "/static/..%2Fpage.py",
                                  "/static/../page.py", "/static/status.js/x", "/static"])
def test_anything_else_under_static_is_not_found(path):
    with pytest.raises(HttpError) as raised:
        get(path)
    assert raised.value.status == 404
