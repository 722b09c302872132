"""/healthz answers without touching any dependency, so a directory or Jira outage never makes
an orchestrator restart the service. /readyz checks every dependency (each directory binds,
Jira authenticates, the database answers), cached for a few seconds per process so probes
don't hammer them."""
from __future__ import annotations

import threading
import time

from flask import Blueprint, current_app, jsonify

from ..directory import DirectoryUnavailable
from ..jira import JiraError

bp = Blueprint("health", __name__)
READY_CACHE_SECONDS = 5.0
_cache: dict = {}
_cache_lock = threading.Lock()


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    services = current_app.extensions["avatar_sync"]
    with _cache_lock:
        cached = _cache.get(id(services))
        if cached and time.monotonic() - cached[0] < READY_CACHE_SECONDS:
            body, code = cached[1]
            return jsonify(body), code
    body, code = _probe(services)
    with _cache_lock:
        _cache[id(services)] = (time.monotonic(), (body, code))
    return jsonify(body), code


def _probe(services) -> tuple[dict, int]:
    checks: dict[str, dict] = {}
    for directory in services.directories:
        try:
            directory.check()
            checks[f"directory:{directory.name}"] = {"ok": True}
        except DirectoryUnavailable as exc:
            checks[f"directory:{directory.name}"] = {"ok": False, "error": exc.reason}
    try:
        services.jira.myself()
        checks["jira"] = {"ok": True}
    except JiraError as exc:
        checks["jira"] = {"ok": False, "error": str(exc)}
    try:
        services.store.ping()
        counts = services.queue.counts()
        checks["database"] = {"ok": True, "queued": counts.get("pending", 0) + counts.get("running", 0),
                              "failed": counts.get("failed", 0)}
    except Exception as exc:  # noqa: BLE001 - any driver error means not ready
        checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    ready = all(c["ok"] for c in checks.values())
    status = "disabled" if services.settings.sync_disabled else ("ok" if ready else "unavailable")
    return {"status": status, "checks": checks}, 200 if ready else 503
