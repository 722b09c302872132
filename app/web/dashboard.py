"""GET /: the dashboard an admin keeps open. A server-rendered page whose plain JavaScript
(static/dashboard.js) asks GET /admin/dashboard.json every few seconds and redraws; its buttons
call the admin API with the dashboard's header (app/web/auth.py). No inline script or style, so
the page runs under a Content-Security-Policy that allows only this service's own files.

The figures come from the store, queue and sweep methods, and readiness: the same ones the API
and the metrics serve.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template

from ..schedule import next_scheduled
from .auth import CSRF_HEADER, admin_required, services

bp = Blueprint(
    "dashboard", __name__, template_folder="templates", static_folder="static", static_url_path="/dashboard-static"
)
RECENT = 25

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def security_headers(response):
    """Every answer: no sniffing, no framing, no referrer; HTML also gets the CSP."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if response.mimetype == "text/html":
        headers.setdefault("Content-Security-Policy", CSP)
    return response


@bp.get("/")
@admin_required
def dashboard():
    svc = services()
    return render_template(
        "dashboard.html", settings=svc.settings, csrf_header=CSRF_HEADER, directories=[d.name for d in svc.directories]
    )


@bp.get("/admin/dashboard.json")
@admin_required
def dashboard_data():
    svc = services()
    readiness = svc.readiness.report(details=True)
    running = svc.sweeps.running()
    latest = running or next(iter(svc.sweeps.latest(limit=1)), None)
    upcoming = next_scheduled(svc) if readiness["status"] != "unavailable" else None
    data = {
        "status": readiness["status"],
        "checks": readiness["checks"],
        "disabled": svc.settings.sync_disabled,
        "next_sweep": upcoming.isoformat() if upcoming else None,
    }
    if readiness["status"] == "unavailable":  # nothing more can be read
        return jsonify(data)
    data.update(
        queue=svc.queue.counts(),
        login_wait=round(svc.queue.login_wait()),
        sweep=latest,
        recent=[_recent(s) for s in svc.store.recent(RECENT)],
    )
    return jsonify(data)


def _recent(state) -> dict:
    return {
        "username": state.username,
        "outcome": state.last_outcome,
        "reason": state.last_error,
        "at": state.last_attempt_at.isoformat() if state.last_attempt_at else None,
        "duration_ms": state.last_duration_ms,
        "source": state.last_source,
        "avatar_id": state.avatar_id,
    }
