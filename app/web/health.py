"""/healthz and /readyz, shaped for load balancers and Kubernetes (app/readiness.py says why a
directory or Jira outage is 200 ``degraded`` and only an unusable database is 503).

/healthz touches no dependency: an orchestrator restarting the service because Jira is down
would only lose the queue's chance to drain. Anonymous /readyz callers see each check's
status; reasons and addresses need the admin token.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..readiness import UNAVAILABLE
from .auth import admin_token_ok, services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    svc = services()
    body = svc.readiness.report(details=admin_token_ok(svc.settings.admin.tokens))
    return jsonify(body), 503 if body["status"] == UNAVAILABLE else 200
