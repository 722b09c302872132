"""Settings that leave a door open. One is refused: a webhook without a secret, unless asked
for. The rest work and are warned about at start-up (app/factory.py) and by `check`:
plain-text credentials, unchecked certificates, short secrets. No Flask here: the CLI's
commands import this without the web app."""

from __future__ import annotations

from urllib.parse import urlsplit

from .config import ConfigError, Settings

MIN_SECRET_LENGTH = 16


def require_webhook_auth(settings: Settings) -> None:
    """An open webhook would let anyone trigger LDAP and Jira work: refuse unless asked for."""
    if not settings.webhook.secret and not settings.webhook.allow_unauthenticated:
        raise ConfigError(
            "webhook.secret",
            "is required (AVATAR_SYNC_WEBHOOK_SECRET); set "
            "webhook.allow_unauthenticated = true to accept unsigned webhooks",
        )


def weak_settings(settings: Settings) -> list[str]:
    """Settings that work but leave a door open: warned about at start and by `check`."""
    out = []
    j = settings.jira
    if urlsplit(j.url).scheme == "http" and (j.password or j.token):
        out.append(f"jira.url is plain http ({j.url}): the Jira credentials cross the network unencrypted")
    if not j.verify_tls:
        out.append("jira.verify_tls is false: anyone on the path to Jira can read the Jira credentials")
    for d in settings.directories:
        key = f"directories[{d.name}]"
        if d.bind_password and not d.start_tls and any(u.startswith("ldap://") for u in d.urls):
            out.append(f"{key}: plain ldap:// without start_tls: the bind password crosses the network unencrypted")
        if not d.verify_tls:
            out.append(f"{key}.verify_tls is false: the directory's certificate is not checked")
    h = settings.http_photos
    if h and urlsplit(h.url).scheme == "http" and (h.password or h.token):
        out.append("http_photos.url is plain http: its credentials cross the network unencrypted")
    if h and not h.verify_tls:
        out.append("http_photos.verify_tls is false: the photo server's certificate is not checked")
    # the two secrets this service itself checks, and so the ones guessed against it
    for name, value in (("webhook.secret", settings.webhook.secret), ("admin.token", settings.admin.token)):
        if value and len(value) < MIN_SECRET_LENGTH:
            out.append(f"{name} is shorter than {MIN_SECRET_LENGTH} characters: easy to guess")
    if settings.webhook.allow_unauthenticated and not settings.webhook.secret:
        out.append("webhook.allow_unauthenticated is true: anyone who reaches the service can make it sync users")
    return out
