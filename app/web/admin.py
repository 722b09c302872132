"""Admin API (app/web/auth.py: who may call it, and the rules for browser credentials)."""

from __future__ import annotations

import threading

from cachetools import TTLCache
from flask import Blueprint, Response, jsonify, request

from .. import job_run, usernames
from ..directory import DirectoryUnavailable
from ..jira import JiraError
from ..sweep import SweepConflict
from ..sync_result import NoPreview
from .auth import BadRequest, admin_required, json_body, services

bp = Blueprint("admin", __name__)
MAX_ID = 2**31 - 1  # ids are INTEGER columns; a longer number names no sweep
MAX_LIMIT = 100_000

# Thumbnails of Jira's current pictures, by (user, avatar id): the dashboard shows a few dozen
# and refreshes every few seconds; Jira is asked once per picture and process.
_thumbnails: TTLCache = TTLCache(maxsize=512, ttl=600)
_thumbnails_lock = threading.Lock()


def _sweep_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > MAX_ID:
        raise BadRequest(404, f"no sweep {text[:40]}")
    return int(text)


def _username(name: str) -> str:
    refused = usernames.problem(name)
    if refused:
        raise BadRequest(400, f"username {refused}")
    return name


def _limit(default: int) -> int:
    text = request.args.get("limit", "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(400, "limit must be a whole number")
    return max(1, min(int(text) if len(text) <= 9 else MAX_LIMIT, MAX_LIMIT))


@bp.post("/admin/users/<path:username>/sync")
@admin_required
def sync_user(username: str):
    body = json_body({"force": bool, "dry_run": bool})
    result = job_run.sync_now(
        services(), _username(username), force=body.get("force", False), dry_run=body.get("dry_run", False)
    )
    return jsonify(result.as_dict())


@bp.get("/admin/users/<path:username>")
@admin_required
def get_user(username: str):
    svc = services()
    state, job = svc.store.get(_username(username)), svc.queue.job_for(username)
    exclusion = svc.exclusions.describe(username, state)
    if state is None and job is None and not exclusion["excluded_by_any"]:
        return jsonify({"username": username, "error": "nothing known about this user"}), 404
    return jsonify(
        {"username": username, "state": state.as_dict() if state else None, "queue": job, "exclusion": exclusion}
    )


@bp.put("/admin/users/<path:username>/exclusion")
@admin_required
def set_exclusion(username: str):
    """``{"excluded": true}``: the user keeps their own picture (logins and sweeps skip them,
    outcome excluded); ``false`` lets the service sync them again."""
    body = json_body({"excluded": bool})
    if "excluded" not in body:
        raise BadRequest(400, 'give {"excluded": true} or {"excluded": false}')
    svc = services()
    svc.store.set_excluded(_username(username), body["excluded"])
    svc.syncer.debounce.forget(username)
    return jsonify({"username": username, "exclusion": svc.exclusions.describe(username, svc.store.get(username))})


@bp.get("/admin/users")
@admin_required
def search_users():
    """``?search=prefix``: what the service knows of the users whose name starts so."""
    prefix = request.args.get("search", "")
    svc = services()
    return jsonify(
        {
            "users": [
                {"username": s.username, "state": s.as_dict(), "queue": svc.queue.job_for(s.username)}
                for s in svc.store.search(prefix, limit=_limit(20))
            ]
        }
    )


@bp.get("/admin/users/<path:username>/avatar.png")
@admin_required
def current_avatar(username: str):
    """The picture Jira shows now, through the service: the admin's browser needs no Jira session."""
    svc = services()
    key = (_username(username).lower(), request.args.get("v", ""))
    with _thumbnails_lock:
        image = _thumbnails.get(key)
    if image is None:
        try:
            image = svc.jira.avatar_image(username)
        except JiraError as exc:
            return jsonify({"error": f"Jira: {exc}"}), 502
        if image is None:
            return jsonify({"error": "Jira shows no picture of its own for this user"}), 404
        with _thumbnails_lock:
            _thumbnails[key] = image
    # the page asks with ?v=<avatar id>: a new picture is a new URL, so caching is safe
    return Response(image, mimetype="image/png", headers={"Cache-Control": "private, max-age=300"})


@bp.get("/admin/users/<path:username>/preview.png")
@admin_required
def preview(username: str):
    """The picture the next sync would upload, rendered now; nothing is written anywhere."""
    try:
        png = services().syncer.preview(_username(username))
    except NoPreview as exc:
        return jsonify({"username": username, "error": exc.reason}), exc.status
    except DirectoryUnavailable as exc:
        return jsonify({"username": username, "error": str(exc)}), 503
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})


@bp.post("/admin/sweeps")
@admin_required
def start_sweep():
    body = json_body({"dry_run": bool, "full": bool})
    svc = services()
    try:
        sweep_id = svc.sweeps.start(dry_run=body.get("dry_run", False), full=body.get("full", False))
    except SweepConflict as exc:
        return jsonify({"error": str(exc)}), 409
    # here and now (any other process would take it within seconds); let go of at this
    # process's exit (gunicorn's worker_exit), so that another resumes it without waiting for the lease
    svc.start_runner()
    return jsonify(svc.sweeps.summary(sweep_id)), 202


@bp.get("/admin/sweeps")
@admin_required
def list_sweeps():
    return jsonify({"sweeps": services().sweeps.latest(limit=_limit(50))})


@bp.get("/admin/sweeps/<sweep_id>")
@admin_required
def get_sweep(sweep_id: str):
    sweeps, number = services().sweeps, _sweep_id(sweep_id)
    summary = sweeps.summary(number)
    if summary is None:
        return jsonify({"error": f"no sweep {number}"}), 404
    summary["problems"] = sweeps.problems(number, limit=_limit(1000))
    return jsonify(summary)


@bp.get("/admin/sweeps/<sweep_id>/problems.<fmt>")
@admin_required
def sweep_problems(sweep_id: str, fmt: str):
    sweeps, number = services().sweeps, _sweep_id(sweep_id)
    if sweeps.summary(number) is None:
        return jsonify({"error": f"no sweep {number}"}), 404
    if fmt == "csv":
        return Response(
            sweeps.problems_csv(number),
            mimetype="text/csv",
            headers={"Content-Disposition": f"attachment; filename=sweep-{number}-problems.csv"},
        )
    if fmt == "json":
        return jsonify({"id": number, "problems": sweeps.problems(number)})
    return jsonify({"error": "problems.csv or problems.json"}), 404


@bp.post("/admin/sweeps/<sweep_id>/cancel")
@admin_required
def cancel_sweep(sweep_id: str):
    json_body({})
    sweeps, number = services().sweeps, _sweep_id(sweep_id)
    if sweeps.summary(number) is None:
        return jsonify({"error": f"no sweep {number}"}), 404
    if not sweeps.cancel(number):
        return jsonify({"error": f"sweep {number} is not running"}), 409
    return jsonify(sweeps.summary(number))
