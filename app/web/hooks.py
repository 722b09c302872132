"""POST /webhooks/jira: authenticate, parse, then app/events.py decides and queues. No LDAP or
Jira work here: the answer comes after one durable insert, so a login is never slowed by a sync.

Order matters: the size limit, then the signature over the raw bytes, and only then is the
body parsed: nothing an unauthenticated sender wrote is ever decoded, and the signature is over
the bytes Jira sent (re-serialised JSON would not match).

A plain WSGI handler wrapped around the Flask app (``app.wsgi_app``), not a Flask view: Flask's
request context, routing and JSON response cost ~100 us of CPU per request on the 2-core
machines this is measured on, a third of what the webhook took, and this is the one path Jira
hits on every login. Every other path goes on to Flask.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from http import HTTPStatus
from urllib.parse import parse_qs

from .. import usernames
from ..database import describe_error
from ..events import accept
from ..metrics import WEBHOOKS
from ..store import UNAVAILABLE as DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)

PATH = "/webhooks/jira"
RETRY_AFTER_SECONDS = 5
# The metric's status for each refusal (a 2xx answer is counted by its own status word).
REFUSALS = {400: "bad_request", 401: "bad_signature", 413: "too_large", 415: "not_json", 503: "unavailable"}


class WebhookDoor:
    """WSGI middleware: answers ``POST /webhooks/jira`` itself, passes everything else on."""

    def __init__(self, app, services):
        self.app, self.services = app, services

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            WEBHOOKS.labels("method_not_allowed").inc()
            return _respond(start_response, 405, {"status": "error", "error": "use POST"}, [("Allow", "POST")])
        headers = []
        try:
            status, answer = self.handle(environ)
        except DATABASE_UNAVAILABLE as exc:
            # locked, full or unreachable: not accepted, and the sender may say so again soon
            log.warning("webhook not accepted, the database cannot take it now: %s", describe_error(exc))
            status, answer = 503, {"status": "error", "error": "the service cannot store events now; try again"}
            headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
        except Exception:
            log.exception("webhook failed")
            status, answer = 500, {"status": "error", "error": "internal error: the event was not accepted"}
        WEBHOOKS.labels(answer["status"] if status < 300 else REFUSALS.get(status, "error")).inc()
        return _respond(start_response, status, answer, headers)

    def handle(self, environ) -> tuple[int, dict]:
        services = self.services
        settings = services.settings
        limit = settings.webhook.max_body_bytes
        body = _read_body(environ, limit)
        if body is None:
            return 413, {"status": "error", "error": f"body over {limit} bytes"}

        if settings.webhook.secret and not authenticated(settings.webhook.secrets, body, environ):
            log.warning("webhook refused from %s: bad or missing signature/token", environ.get("REMOTE_ADDR"))
            return 401, {"status": "error", "error": "bad or missing signature or token"}

        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return 415, {"status": "error", "error": "body is not JSON"}
        except RecursionError:  # thousands of nested arrays: valid JSON no webhook sends
            return 400, {"status": "error", "error": "body is nested too deeply"}
        if not isinstance(payload, dict):
            return 400, {"status": "error", "error": "body must be a JSON object"}
        user = payload.get("user")
        username = user.get("name") if isinstance(user, dict) else None
        if not isinstance(username, str) or not username.strip():
            return 400, {"status": "error", "error": "missing field user.name"}
        username = username.strip()
        refused = usernames.problem(username)
        if refused:
            return 400, {"status": "error", "error": f"user.name {refused}"}
        event = payload.get("webhookEvent") or "user_login"
        if not isinstance(event, str):
            return 400, {"status": "error", "error": "webhookEvent must be a string"}

        return accept(services, event, username, environ.get("HTTP_X_ATLASSIAN_WEBHOOK_IDENTIFIER") or None)


def _read_body(environ, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes, whatever the framing: a declared
    Content-Length is checked before reading; a chunked body is read to one byte past the
    limit (never cut at the limit: the signature would then cover a prefix)."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared.strip():
        try:
            length = int(declared)
        except ValueError:
            return None
        if length > limit:
            return None
        return stream.read(length) if length > 0 else b""
    body = b""
    while len(body) <= limit:
        chunk = stream.read(limit + 1 - len(body))
        if not chunk:
            return body
        body += chunk
    return None


def authenticated(secrets: tuple[str, ...], body: bytes, environ) -> bool:
    """X-Hub-Signature: sha256=<hex HMAC of the raw body>, or a secret as ?token= / Bearer.
    ``secrets``: the current one and, during a rotation, the previous one."""
    signature = environ.get("HTTP_X_HUB_SIGNATURE", "")
    if signature:
        method, _, digest = signature.partition("=")
        if method.strip().lower() != "sha256":
            return False
        # bytes: compare_digest refuses str with non-ASCII characters (WSGI headers are latin-1)
        given = digest.strip().lower().encode("latin-1")
        return any(
            hmac.compare_digest(hmac.new(s.encode(), body, hashlib.sha256).hexdigest().encode(), given) for s in secrets
        )
    token = parse_qs(environ.get("QUERY_STRING", "")).get("token", [""])[0].encode()
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if not token and auth[:7].lower() == "bearer ":
        token = auth[7:].strip().encode("latin-1")  # the header's own bytes
    return bool(token) and any(hmac.compare_digest(token, s.encode()) for s in secrets)


def _respond(start_response, status: int, answer: dict, headers=()) -> list[bytes]:
    body = json.dumps(answer).encode() + b"\n"
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
    )
    return [body]
