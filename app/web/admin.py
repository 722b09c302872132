"""Admin API: Bearer <admin token>, or HTTP Basic with the token as password (for browsers)."""
from __future__ import annotations

import base64
import binascii
import functools
import hmac

from flask import Blueprint, current_app, jsonify, request

bp = Blueprint("admin", __name__)


def _services():
    return current_app.extensions["avatar_sync"]


def admin_token_ok(token: str) -> bool:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            given = ""
    return bool(token) and bool(given) and hmac.compare_digest(given.encode(), token.encode())


def admin_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        token = _services().settings.admin.token
        if not token:
            return jsonify({"error": "the admin API is off: set admin.token"}), 403
        if not admin_token_ok(token):
            return (jsonify({"error": "admin token required"}), 401,
                    {"WWW-Authenticate": 'Basic realm="jira-avatar-sync"'})
        return view(*args, **kwargs)
    return wrapper


@bp.post("/admin/users/<path:username>/sync")
@admin_required
def sync_user(username: str):
    body = request.get_json(silent=True) if request.get_data() else {}
    if not isinstance(body, dict):
        return jsonify({"error": "body must be a JSON object such as {\"force\": false}"}), 400
    force, dry_run = body.get("force", False), body.get("dry_run", False)
    if not isinstance(force, bool) or not isinstance(dry_run, bool):
        return jsonify({"error": "force and dry_run must be true or false"}), 400
    result = _services().syncer.sync_user(username, force=force, dry_run=dry_run)
    return jsonify(result.as_dict())


@bp.get("/admin/users/<path:username>")
@admin_required
def get_user(username: str):
    services = _services()
    state = services.store.get(username)
    job = services.queue.job_for(username)
    if state is None and job is None:
        return jsonify({"username": username, "error": "nothing known about this user"}), 404
    return jsonify({"username": username, "state": state.as_dict() if state else None, "queue": job})


@bp.post("/admin/sweeps")
@admin_required
def start_sweep():
    from ..sweep import SweepConflict, Sweeps, run_in_background

    body = request.get_json(silent=True) if request.get_data() else {}
    if not isinstance(body, dict) or not all(isinstance(body.get(k, False), bool) for k in ("dry_run", "full")):
        return jsonify({"error": "body must be a JSON object such as {\"dry_run\": false, \"full\": false}"}), 400
    services = _services()
    try:
        sweep_id = Sweeps(services).start(dry_run=body.get("dry_run", False), full=body.get("full", False))
    except SweepConflict as exc:
        return jsonify({"error": str(exc)}), 409
    run_in_background(services)  # here and now; any other process would take it within seconds
    return jsonify(Sweeps(services).summary(sweep_id)), 202


@bp.get("/admin/sweeps")
@admin_required
def list_sweeps():
    from ..sweep import Sweeps
    return jsonify({"sweeps": Sweeps(_services()).list()})


@bp.get("/admin/sweeps/<int:sweep_id>")
@admin_required
def get_sweep(sweep_id: int):
    from ..sweep import Sweeps
    sweeps = Sweeps(_services())
    summary = sweeps.summary(sweep_id)
    if summary is None:
        return jsonify({"error": f"no sweep {sweep_id}"}), 404
    limit = request.args.get("limit", default=1000, type=int)
    summary["problems"] = sweeps.problems(sweep_id, limit=max(1, limit))
    return jsonify(summary)


@bp.get("/admin/sweeps/<int:sweep_id>/problems.<fmt>")
@admin_required
def sweep_problems(sweep_id: int, fmt: str):
    from ..sweep import Sweeps
    sweeps = Sweeps(_services())
    if sweeps.summary(sweep_id) is None:
        return jsonify({"error": f"no sweep {sweep_id}"}), 404
    if fmt == "csv":
        return current_app.response_class(sweeps.problems_csv(sweep_id), mimetype="text/csv", headers={
            "Content-Disposition": f"attachment; filename=sweep-{sweep_id}-problems.csv"})
    if fmt == "json":
        return jsonify({"id": sweep_id, "problems": sweeps.problems(sweep_id)})
    return jsonify({"error": "problems.csv or problems.json"}), 404


@bp.post("/admin/sweeps/<int:sweep_id>/cancel")
@admin_required
def cancel_sweep(sweep_id: int):
    from ..sweep import Sweeps
    sweeps = Sweeps(_services())
    if sweeps.summary(sweep_id) is None:
        return jsonify({"error": f"no sweep {sweep_id}"}), 404
    if not sweeps.cancel(sweep_id):
        return jsonify({"error": f"sweep {sweep_id} is not running"}), 409
    return jsonify(sweeps.summary(sweep_id))
