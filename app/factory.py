"""create_app(): wires settings, logging, store and services, registers the blueprints and puts
the webhook door (and, behind proxies, ProxyFix) in front. It opens no connection and starts no
thread: gunicorn forks after it. app/__init__.py says why this lives apart from the package's
top.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

from . import logs
from .config import Settings, load_settings
from .database import describe_error
from .database_deadline import BoundedUses
from .services import build_services
from .store import UNAVAILABLE as DATABASE_UNAVAILABLE
from .weak_settings import require_webhook_auth, weak_settings
from .web import admin, dashboard, health, hooks, metrics
from .web.auth import EXTENSION
from .web.hooks import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)


def create_app(config: Settings | None = None) -> Flask:
    settings = config or load_settings()
    require_webhook_auth(settings)
    logs.setup(settings.log_level, settings.log_format)
    for warning in weak_settings(settings):
        log.warning("weak setting: %s", warning)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook.max_body_bytes
    services = app.extensions[EXTENSION] = build_services(settings)
    for blueprint in (health.bp, admin.bp, metrics.bp, dashboard.bp):
        app.register_blueprint(blueprint)
    app.after_request(dashboard.security_headers)
    for error in DATABASE_UNAVAILABLE:
        app.register_error_handler(error, _database_unavailable)
    # the webhook, Jira's one hot path, is answered before Flask (see app/web/hooks.py)
    app.wsgi_app = hooks.WebhookDoor(app.wsgi_app, services)  # type: ignore[method-assign]  # Flask's way
    if not services.store.sqlite:  # no web thread waits on PostgreSQL for long (app/database_deadline.py)
        app.wsgi_app = BoundedUses(app.wsgi_app, services.store.user_wait)  # type: ignore[method-assign]
    if settings.trusted_proxies:  # outermost: every door and the access log see the real client
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n
        )
    return app


def _database_unavailable(exc):
    """A locked, full or unreachable database: 503 with the reason in the log, never a 500."""
    log.warning("request not served, the database cannot be used now: %s", describe_error(exc))
    return (
        jsonify({"error": "the service's database cannot be used now; try again"}),
        503,
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
