"""The status page for people: ``GET /`` and its two static files (docs/operations.rst).

The server renders the page's document (its structure, the settings the script needs, no
instance data); ``static/status.js`` fills it from ``GET /status`` every
:data:`REFRESH_SECONDS` and ``static/status.css`` styles it. Both ship as package data: no
framework, no CDN, the page works offline. Data reaches the page only as JSON, so every
answer passes the server's password scrubbing, and the script writes it with
``textContent`` only (never ``innerHTML``): an instance's error text is shown, never run.
The :data:`HEADERS` forbid inline scripts and foreign origins as a second net.

Actions (restart, verify, shutdown, enable) are requests to the JSON API with
``Authorization: Bearer <token>`` and ``Content-Type: application/json``; the token is typed
once per browser tab and kept in its ``sessionStorage``. Without it the page is read-only.

With ``token_for_reads`` a browser cannot send that header when it opens the page, so the
server answers an unauthenticated ``GET /`` with :func:`login_document`: a form that posts
the token to ``/login`` (or a link ``/?token=...``), after which the server sets a read
cookie (:mod:`supervisor.http.server`); that cookie opens reads only, never actions.

Transport-free like :mod:`supervisor.http.routes`: functions return bytes and content
types; routes wraps them in answers.
"""
import dataclasses
import html
import importlib.resources

from instances.spec import InstanceSpec

#: Seconds between two refreshes of the page (the script's poll of GET /status).
REFRESH_SECONDS = 2.0
HTML_TYPE = "text/html; charset=utf-8"
#: The static files: name -> content type (nothing else under /static/ is served).
ASSETS = {"status.js": "text/javascript; charset=utf-8",
          "status.css": "text/css; charset=utf-8"}
#: Headers of the page and its files: same-origin scripts, styles and requests only.
HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
     "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
     "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]

#: Headers of the login page: as :data:`HEADERS`, but its one form may post to this origin.
LOGIN_HEADERS = [(name, value.replace("form-action 'none'", "form-action 'self'"))
                 for name, value in HEADERS]

_LOGIN = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgvisor status: token</title>
<link rel="stylesheet" href="static/status.css">
</head>
<body>
<header><h1>pgvisor</h1></header>
<main>
  <section>
    <h2>API token</h2>
    <p>This server asks for its API token to show its status ({problem}).</p>
    <form method="post" action="login" autocomplete="off">
      <input name="token" type="password" placeholder="API token" aria-label="API token"
             required autofocus>
      <button type="submit">Open the status page</button>
    </form>
    <p class="muted">The browser keeps a read-only cookie for this site until it closes;
    actions still ask for the token on the page.</p>
  </section>
</main>
</body>
</html>
"""

_DOCUMENT = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgvisor status</title>
<link rel="stylesheet" href="static/status.css">
<script src="static/status.js" defer></script>
</head>
<body data-refresh-ms="{refresh_ms}" data-spec-fields="{spec_fields}">
<header>
  <h1>pgvisor</h1>
  <span id="refreshed" class="muted">loading&hellip;</span>
  <span id="problem" class="problem" hidden></span>
  <form id="token-form" autocomplete="off">
    <span id="mode" class="muted">read-only: enter the API token to act</span>
    <input id="token" type="password" placeholder="API token" aria-label="API token">
    <button id="token-use" type="submit">Use token</button>
    <button id="token-forget" type="button" hidden>Forget token</button>
  </form>
</header>
<main>
  <section id="database-section">
    <h2>Database</h2>
    <dl id="database" class="facts"></dl>
    <p id="counters" class="muted"></p>
  </section>
  <section id="notifiers-section" hidden>
    <h2>Notifiers</h2>
    <table id="notifiers"><thead></thead><tbody></tbody></table>
  </section>
  <section id="nodes-section" hidden>
    <h2>Nodes</h2>
    <table id="nodes"><thead></thead><tbody></tbody></table>
  </section>
  <section id="instances-section">
    <h2>Instances</h2>
    <table id="instances">
      <thead><tr>
        <th>instance</th><th>state</th><th title="restarts so far">restarts</th>
        <th title="automatic restarts allowed now (restart_max_rate)">budget left</th>
        <th title="notifications waiting in the queue">queue</th>
        <th title="messages set aside in the spool's errors/">spool errors</th>
        <th title="overflow episodes: a full queue dropped live notifications, then one catch_up">overflows</th>
        <th>catch-ups</th><th title="handled per second, between two refreshes">processed/s</th>
        <th>last error</th><th class="actions">actions</th>
      </tr></thead>
      <tbody></tbody>
    </table>
    <ol id="outcomes" class="outcomes"></ol>
  </section>
  <section id="events-section">
    <h2>Recent state changes</h2>
    <ol id="events" class="events"></ol>
  </section>
</main>
<noscript><p>This page needs JavaScript; the same data is at <a href="status">status</a>
(JSON).</p></noscript>
</body>
</html>
"""


def document():
    """The page's HTML (bytes): the structure the script fills."""
    fields = ",".join(f.name for f in dataclasses.fields(InstanceSpec))
    return _DOCUMENT.format(refresh_ms=int(REFRESH_SECONDS * 1000),
                            spec_fields=html.escape(fields)).encode("utf-8")


def login_document(wrong=False):
    """The login page (bytes): one form posting the token to ``login``. ``wrong``: a token
    was given and it was not the server's."""
    problem = "the token given was wrong" if wrong else "[http] token_for_reads is on"
    return _LOGIN.format(problem=html.escape(problem)).encode("utf-8")


def asset(name):
    """``(bytes, content type)`` of the static file ``name``; None when there is none."""
    if name not in ASSETS:
        return None
    data = importlib.resources.files(__package__).joinpath("static", name).read_bytes()
    return data, ASSETS[name]
