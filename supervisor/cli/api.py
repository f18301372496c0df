"""The CLI's client of a running service's HTTP control API (``pgvisor status``, ``restart``...).

Plain :mod:`urllib` (cooperative under the CLI's monkey-patching), JSON in and out. Errors
become :class:`~supervisor.cli.output.CliError` with the documented exit codes: the service
unreachable -> 3, an unknown instance (404 on an instance route) -> 4, a refused token
(401) -> 2, any other error answer -> 1. Blocks the caller up to ``timeout`` seconds per
request.
"""
import json
import urllib.error
import urllib.parse
import urllib.request

from supervisor.cli import output as cli_output
from supervisor.cli.output import CliError


class ApiClient:
    """Talks to the API at ``url`` (``http://host:port``) with an optional bearer ``token``."""

    #: Seconds to wait for an answer (a ``?wait=1`` request adds its own wait).
    timeout = 10.0

    def __init__(self, url, token=None, timeout=None):
        self.url = url.rstrip("/")
        self.token = token
        if timeout is not None:
            self.timeout = timeout

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, query=None, wait=0.0):
        return self.request("POST", path, query, wait)

    def request(self, method, path, query=None, wait=0.0):
        """``(status, body)`` of one request; raise CliError for errors (see module)."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer %s" % self.token
        if method != "GET":
            headers["Content-Type"] = "application/json"  # the API refuses other mutations
        req = urllib.request.Request(url, method=method, headers=headers,
                                     data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout + wait) as answer:
                return answer.status, _decode(answer.read())
        except urllib.error.HTTPError as exc:
            body = _decode(exc.read())
            raise _http_error(exc.code, body, path) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError("cannot reach the pgvisor service at %s: %s (is `pgvisor run` "
                           "running? check [http] listen in the config, or --url)"
                           % (self.url, reason), cli_output.UNREACHABLE) from None


def _decode(raw):
    try:
        return json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"error": raw.decode("utf-8", "replace")[:200]}


def _http_error(status, body, path):
    message = body.get("error") if isinstance(body, dict) else None
    message = message or "HTTP %d" % status
    if status == 404 and path.startswith("/instances/"):
        return CliError(message, cli_output.UNKNOWN_INSTANCE)
    if status == 401:
        return CliError("%s (give -c with the service's config, --token-file FILE or "
                        "PGVISOR_HTTP_TOKEN)" % message, cli_output.USAGE)
    return CliError("service answered %d: %s" % (status, message), cli_output.FAILED)
