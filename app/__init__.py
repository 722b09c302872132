"""jira-avatar-sync: keeps Jira Server / Data Center profile pictures in step with LDAP and AD.

``create_app()`` (app/factory.py) wires settings, store and services, registers the blueprints
and puts the webhook door in front. It opens no connection and starts no thread: gunicorn forks after it,
and sockets or threads made before the fork would be shared by, or missing from, the workers.
The queue workers are started by gunicorn's post_worker_init hook (app/gunicorn_conf.py) or by
``jira-avatar-sync worker``.
"""

from __future__ import annotations

__version__ = "0.2.0"


def create_app(config=None):
    """The Flask app (app/factory.py). Imported here, not at the top: ``import app`` must stay
    light, because gunicorn imports app.gunicorn_conf (and so this package) in its master
    before it has chosen prometheus_client's multi-process store, which prometheus_client
    fixes when it is first imported."""
    from .factory import create_app as build

    return build(config)
