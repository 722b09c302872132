"""What a Jira user event asks of the service: the webhook's rules, behind any door that
receives events (app/web/hooks.py only parses and authenticates).

- user_deleted: the user's queued work and stored state are forgotten (a running attempt ends);
- user_login: synced, unless the service's own account (ignored), sync is disabled, or the
  user synced within login_debounce_seconds (debounced; Jira sends one per request);
- user_created, user_updated: synced even when just debounced (they may carry a new photo);
- a delivery id seen before (Jira retrying a webhook) is accepted once;
- anything else is acknowledged and ignored.
"""

from __future__ import annotations

from .outcomes import DEBOUNCED, IGNORED
from .queue import LOGIN, USER_EVENT

SYNC_EVENTS = {"user_login": LOGIN, "user_created": USER_EVENT, "user_updated": USER_EVENT}
DELETE_EVENTS = {"user_deleted"}


def accept(services, event: str, username: str, delivery_id: str | None = None) -> tuple[int, dict]:
    """The HTTP status and answer for ``event`` about ``username`` (valid: usernames.problem
    found nothing). Database trouble raises (store.UNAVAILABLE): the door answers 503."""
    if event in DELETE_EVENTS:
        services.queue.forget(username)
        services.store.delete(username)
        return 200, {"status": "forgotten", "user": username}
    if event not in SYNC_EVENTS:
        return 200, {"status": IGNORED, "user": username, "reason": f"event {event} is not handled"}
    decision = services.syncer.debounce.decision(username)
    if decision == DEBOUNCED and event != "user_login":
        decision = None  # a changed user is worth a sync even if it just logged in
    if decision is not None:
        return 200, {"status": decision, "user": username}
    if not services.queue.enqueue(
        username, SYNC_EVENTS[event], source=event.removeprefix("user_"), delivery_id=delivery_id
    ):
        return 200, {"status": IGNORED, "user": username, "reason": "delivery already accepted"}
    return 202, {"status": "queued", "user": username}
