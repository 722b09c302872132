"""Liveness: /healthz answers without touching any dependency, so a directory or Jira outage
never makes an orchestrator restart the service."""
from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})
