"""jira-avatar-sync: keeps Jira Server / Data Center profile pictures in step with LDAP and AD.

``create_app()`` wires settings, store and services and registers the blueprints. It opens no
connection and starts no thread: gunicorn forks after it, and sockets or threads made before
the fork would be shared by, or missing from, the workers.
"""
from __future__ import annotations

from flask import Flask

from .config import Settings, load_settings
from .services import build_services


def create_app(config: Settings | None = None) -> Flask:
    settings = config or load_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook.max_body_bytes
    app.extensions["avatar_sync"] = build_services(settings)

    from .web import health
    app.register_blueprint(health.bp)
    return app
