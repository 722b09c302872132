"""POST /webhooks/jira: authenticate, parse, decide, queue, answer. No LDAP or Jira work here:
the answer comes after one durable insert, so a login is never slowed by a sync.

Order matters: the size limit, then the signature over the raw bytes, and only then is the
body parsed (reference/engineering-notes.md §4).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..queue import LOGIN, USER_EVENT
from ..sync import DEBOUNCED, IGNORED

log = logging.getLogger(__name__)
bp = Blueprint("hooks", __name__)

SYNC_EVENTS = {"user_login": LOGIN, "user_created": USER_EVENT, "user_updated": USER_EVENT}
DELETE_EVENTS = {"user_deleted"}


def _answer(status_code: int, status: str, **extra):
    return jsonify({"status": status, **extra}), status_code


def authenticated(secret: str, body: bytes) -> bool:
    """X-Hub-Signature: sha256=<hex HMAC of the raw body>, or the secret as ?token= / Bearer."""
    key = secret.encode()
    signature = request.headers.get("X-Hub-Signature", "")
    if signature:
        method, _, digest = signature.partition("=")
        if method.strip().lower() != "sha256":
            return False
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, digest.strip().lower())
    token = request.args.get("token", "")
    auth = request.headers.get("Authorization", "")
    if not token and auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
    return bool(token) and hmac.compare_digest(token.encode(), key)


@bp.post("/webhooks/jira")
def jira_webhook():
    services = current_app.extensions["avatar_sync"]
    settings = services.settings
    limit = settings.webhook.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _answer(413, "error", error=f"body over {limit} bytes")
    try:
        body = request.get_data(cache=True)  # werkzeug stops reading at MAX_CONTENT_LENGTH
    except RequestEntityTooLarge:
        return _answer(413, "error", error=f"body over {limit} bytes")

    if settings.webhook.secret and not authenticated(settings.webhook.secret, body):
        log.warning("webhook refused from %s: bad or missing signature/token", request.remote_addr)
        return _answer(401, "error", error="bad or missing signature or token")

    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _answer(415, "error", error="body is not JSON")
    if not isinstance(payload, dict):
        return _answer(400, "error", error="body must be a JSON object")
    user = payload.get("user")
    username = user.get("name") if isinstance(user, dict) else None
    if not isinstance(username, str) or not username.strip():
        return _answer(400, "error", error="missing field user.name")
    username = username.strip()
    event = payload.get("webhookEvent") or "user_login"
    if not isinstance(event, str):
        return _answer(400, "error", error="webhookEvent must be a string")

    if event in DELETE_EVENTS:
        services.queue.forget(username)
        services.store.delete(username)
        return _answer(200, "forgotten", user=username)
    if event not in SYNC_EVENTS:
        return _answer(200, IGNORED, user=username, reason=f"event {event} is not handled")

    decision = services.syncer.login_decision(username)
    if decision == DEBOUNCED and event != "user_login":
        decision = None  # a changed user is worth a sync even if it just logged in
    if decision is not None:
        return _answer(200, decision, user=username)
    delivery = request.headers.get("X-Atlassian-Webhook-Identifier") or None
    if not services.queue.enqueue(username, SYNC_EVENTS[event], source=event.removeprefix("user_"),
                                  delivery_id=delivery):
        return _answer(200, IGNORED, user=username, reason="delivery already accepted")
    return _answer(202, "queued", user=username)
