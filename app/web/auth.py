"""Who may call the admin side, and how a view reaches the services.

Admin authentication: ``Authorization: Bearer <admin token>`` (curl, scripts), or HTTP Basic
with the token as password (browsers). Browser credentials are sent by the browser on its
own, so a page on any other site could make the admin's browser post a form here. Every
request that changes something and carries Basic credentials must therefore show it comes
from the dashboard: a JSON body (a cross-site form can only send form-encoded or text/plain
bodies without a CORS preflight, which this service never grants), the dashboard's custom
header, and, where the browser says so, the same origin.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, jsonify, request

EXTENSION = "avatar_sync"
CSRF_HEADER = "X-Avatar-Sync-Request"  # the dashboard's fetch() sends it; forms cannot
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BadRequest(Exception):
    """An admin request the service refuses, with its status and a message for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def services():
    """The services of this app: the one way a view reaches them."""
    return current_app.extensions[EXTENSION]


def _given_token() -> tuple[str, str]:
    """(scheme, token) from the Authorization header; ("", "") when there is none."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return scheme, value.strip()
    if scheme == "basic":
        try:
            return scheme, base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return scheme, ""
    return "", ""


def admin_token_ok(tokens: tuple[str, ...]) -> bool:
    """The request carries one of ``tokens`` (the admin token, and during a rotation the
    previous one), compared in constant time."""
    given = _given_token()[1].encode()
    return bool(given) and any(hmac.compare_digest(given, t.encode()) for t in tokens if t)


def _refuse(status: int, message: str, challenge: bool = False):
    headers = {"WWW-Authenticate": 'Basic realm="jira-avatar-sync", charset="UTF-8"'} if challenge else {}
    return jsonify({"error": message}), status, headers


def admin_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        tokens = services().settings.admin.tokens
        if not services().settings.admin.token:
            return _refuse(403, "the admin API is off: set admin.token")
        scheme, given = _given_token()
        if not given:
            return _refuse(401, "admin token required (Authorization: Bearer <token>)", challenge=True)
        if not admin_token_ok(tokens):
            return _refuse(401, "wrong admin token", challenge=True)
        if scheme == "basic" and request.method not in SAFE_METHODS:
            refusal = _cross_site_refusal()
            if refusal:
                return _refuse(403, refusal)
        try:
            return view(*args, **kwargs)
        except BadRequest as exc:
            return _refuse(exc.status, str(exc))

    return wrapper


def _cross_site_refusal() -> str | None:
    """Why a browser-credentialed change is refused, or None when it came from the dashboard."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    # the host alone: behind a TLS proxy without trusted_proxies the scheme seen here is http
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        return "cross-site request refused (Origin does not match this service)"
    if request.mimetype != "application/json":
        return "a change made with browser credentials must send a JSON body (Content-Type: application/json)"
    if request.headers.get(CSRF_HEADER) != "1":
        return f"a change made with browser credentials must come from the dashboard ({CSRF_HEADER} header)"
    return None


def json_body(allowed: dict[str, type]) -> dict[str, Any]:
    """The request's JSON object, each key one of ``allowed`` with a value of its type.
    An empty body is {}. Bearer clients may leave the Content-Type out (curl -d sends a form's)."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    if request.mimetype != "application/json" and _given_token()[0] != "bearer":
        raise BadRequest(415, "the body must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not valid JSON") from None
    example = json.dumps({k: t() for k, t in allowed.items()})
    if not isinstance(body, dict):
        raise BadRequest(400, f"the body must be a JSON object such as {example}")
    for key, value in body.items():
        kind = allowed.get(key)
        if kind is None:
            raise BadRequest(400, f"unknown key {key!r} (known: {', '.join(sorted(allowed)) or 'none'})")
        if kind is bool and not isinstance(value, bool) or kind is not bool and not isinstance(value, kind):
            raise BadRequest(400, f"{key} must be {'true or false' if kind is bool else kind.__name__}")
    return body
