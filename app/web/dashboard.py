"""GET /: the admin dashboard. Read-only HTML rendered from the same figures the API serves;
its buttons call the admin API (the browser's Basic credentials carry the admin token)."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template
from sqlalchemy import func, select

from ..store import user_state
from ..sweep import Sweeps
from ..sync import OUTCOMES
from .admin import admin_required

bp = Blueprint("dashboard", __name__, template_folder="templates")


@bp.get("/")
@admin_required
def dashboard():
    services = current_app.extensions["avatar_sync"]
    with services.store.engine.connect() as conn:
        by_outcome = dict(conn.execute(select(user_state.c.last_outcome, func.count())
                                       .group_by(user_state.c.last_outcome)).all())
        recent_failures = conn.execute(
            select(user_state.c.username, user_state.c.last_outcome, user_state.c.last_error,
                   user_state.c.last_attempt_at)
            .where(user_state.c.last_outcome.in_(["failed", "invalid_photo"]))
            .order_by(user_state.c.last_attempt_at.desc()).limit(20)).mappings().all()
    settings = services.settings
    return render_template(
        "dashboard.html", settings=settings, queue=services.queue.counts(),
        outcomes=[(o, by_outcome.get(o, 0)) for o in OUTCOMES], failures=recent_failures,
        sweeps=Sweeps(services).list(limit=10),
        directories=[d.name for d in services.directories])
