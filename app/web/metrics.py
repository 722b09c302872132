"""GET /metrics: Prometheus text format (app/metrics.py says what is counted where).
Open by default; ``metrics.require_admin = true`` puts it behind the admin token."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from ..metrics import exposition
from .auth import admin_token_ok, services

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    svc = services()
    if svc.settings.metrics_require_admin and not admin_token_ok(svc.settings.admin.tokens):
        return jsonify({"error": "admin token required"}), 401
    return Response(exposition(svc), mimetype=CONTENT_TYPE_LATEST)
