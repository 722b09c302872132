# gunicorn -c deploy/gunicorn.conf.py --bind 0.0.0.0:8080 'app:create_app()'
# The settings and the hooks that start the sync workers after fork live in the package,
# so `jira-avatar-sync serve` uses the very same ones from an installed copy.
from app.gunicorn_conf import *  # noqa: F401,F403
