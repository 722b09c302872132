"""GET /metrics: Prometheus text format.

Every figure is read from the shared database at scrape time, so it is the same whichever
gunicorn worker or replica answers (per-process counters would differ from scrape to scrape).
Open by default; ``metrics.require_admin = true`` puts it behind the admin token.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from ..queue import jobs
from ..store import user_state
from ..sweep import sweep_items, sweeps
from ..sync import OUTCOMES
from .admin import admin_token_ok

bp = Blueprint("metrics", __name__)


class _DatabaseCollector:
    def __init__(self, services):
        self.services = services

    def collect(self):
        with self.services.store.engine.connect() as conn:
            queue = dict(conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all())
            users = dict(conn.execute(select(user_state.c.last_outcome, func.count())
                                      .group_by(user_state.c.last_outcome)).all())
            running = conn.execute(select(sweeps.c.id).where(sweeps.c.status == "running")).first()
            last_success = conn.execute(select(func.max(user_state.c.last_success_at))).scalar()
            progress = None
            if running:
                progress = conn.execute(select(func.count(), func.count(sweep_items.c.outcome))
                                        .where(sweep_items.c.sweep_id == running.id)).one()
        g = GaugeMetricFamily("jira_avatar_sync_queue_jobs", "Jobs in the durable queue", labels=["state"])
        for state in ("pending", "running", "failed"):
            g.add_metric([state], queue.get(state, 0))
        yield g
        g = GaugeMetricFamily("jira_avatar_sync_users", "Users by the outcome of their last sync", labels=["outcome"])
        for outcome in OUTCOMES:
            g.add_metric([outcome], users.get(outcome, 0))
        yield g
        yield GaugeMetricFamily("jira_avatar_sync_sweep_running", "1 while a sweep runs", value=1 if running else 0)
        if progress is not None:
            g = GaugeMetricFamily("jira_avatar_sync_sweep_users", "Users of the running sweep", labels=["state"])
            g.add_metric(["total"], progress[0])
            g.add_metric(["done"], progress[1])
            yield g
        if last_success is not None:
            yield GaugeMetricFamily("jira_avatar_sync_last_success_timestamp_seconds",
                                    "When a sync last ended in a settled outcome",
                                    value=last_success.timestamp())
        yield GaugeMetricFamily("jira_avatar_sync_disabled", "1 when photo_attributes is empty",
                                value=1 if self.services.settings.sync_disabled else 0)


@bp.get("/metrics")
def metrics():
    services = current_app.extensions["avatar_sync"]
    if services.settings.metrics_require_admin and not admin_token_ok(services.settings.admin.token):
        return jsonify({"error": "admin token required"}), 401
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DatabaseCollector(services))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
