"""jira-avatar-sync: keeps Jira Server / Data Center profile pictures in step with LDAP and AD.

``create_app()`` wires settings, store and services, registers the blueprints and puts the
webhook door in front. It opens no connection and starts no thread: gunicorn forks after it,
and sockets or threads made before the fork would be shared by, or missing from, the workers.
The queue workers are started by gunicorn's post_worker_init hook (app/gunicorn_conf.py) or by
``jira-avatar-sync worker``.
"""
from __future__ import annotations

import logging

from flask import Flask

from .config import ConfigError, Settings, load_settings
from .services import build_services


def create_app(config: Settings | None = None) -> Flask:
    settings = config or load_settings()
    require_webhook_auth(settings)
    setup_logging(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook.max_body_bytes
    app.extensions["avatar_sync"] = build_services(settings)

    from .web import admin, dashboard, health, hooks, metrics
    for blueprint in (health.bp, admin.bp, metrics.bp, dashboard.bp):
        app.register_blueprint(blueprint)
    # the webhook, Jira's one hot path, is answered before Flask (see app/web/hooks.py)
    app.wsgi_app = hooks.WebhookDoor(app.wsgi_app, app.extensions["avatar_sync"])
    return app


def require_webhook_auth(settings: Settings) -> None:
    """An open webhook would let anyone trigger LDAP and Jira work: refuse unless asked for."""
    if not settings.webhook.secret and not settings.webhook.allow_unauthenticated:
        raise ConfigError("webhook.secret", "is required (AVATAR_SYNC_WEBHOOK_SECRET); set "
                          "webhook.allow_unauthenticated = true to accept unsigned webhooks")


def setup_logging(settings: Settings) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    root.setLevel(settings.log_level)
