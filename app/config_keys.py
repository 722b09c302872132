"""Every name the configuration knows: the keys of the TOML file by table, which of them are
secrets (and so may come from a file), and the AVATAR_SYNC_* environment variables. The loader
refuses any other key; the README's reference table, deploy/config.example.toml and the
environment names are tested against these lists.
"""

from __future__ import annotations

ENV_PREFIX = "AVATAR_SYNC_"

# by table: "" is the top level, "directories" each [[directories]] table
KEYS: dict[str, tuple[str, ...]] = {
    "": (
        "database_url",
        "photo_attributes",
        "size",
        "crop",
        "photo_removed",
        "exclude_users",
        "exclude_groups",
        "prefer",
        "login_debounce_seconds",
        "max_photo_bytes",
        "max_photo_pixels",
        "log_level",
        "log_format",
        "trusted_proxies",
    ),
    "jira": (
        "url",
        "username",
        "password",
        "token",
        "max_concurrency",
        "max_requests_per_second",
        "limits_scope",
        "connect_timeout",
        "timeout",
        "max_retries",
        "ca_file",
        "verify_tls",
        "user_groups",
    ),
    "http_photos": ("url", "username", "password", "token", "ca_file", "verify_tls", "timeout", "position"),
    "webhook": ("secret", "previous_secret", "allow_unauthenticated", "max_body_bytes"),
    "admin": ("token", "previous_token"),
    "worker": (
        "threads",
        "poll_seconds",
        "lease_seconds",
        "max_attempts",
        "retry_base_seconds",
        "retry_max_seconds",
        "start_in_web",
    ),
    "sweep": ("schedule",),
    "metrics": ("require_admin",),
    "directories": (
        "name",
        "urls",
        "bind_dn",
        "bind_password",
        "base_dn",
        "user_filter",
        "username_attribute",
        "photo_attributes",
        "ca_file",
        "start_tls",
        "verify_tls",
        "connect_timeout",
        "timeout",
        "pool_size",
    ),
}
SECRETS = {
    "jira.password",
    "jira.token",
    "webhook.secret",
    "webhook.previous_secret",
    "admin.token",
    "admin.previous_token",
    "directories.bind_password",
    "http_photos.password",
    "http_photos.token",
}
ALIASES = {"directories": ("url",)}  # one URL instead of the list


def accepted(table: str) -> set[str]:
    """The keys a table may hold: its own, ``<secret>_file`` for each secret, aliases, and at
    the top level the tables."""
    keys = set(KEYS[table]) | set(ALIASES.get(table, ()))
    keys |= {k + "_file" for k in KEYS[table] if f"{table}.{k}".lstrip(".") in SECRETS}
    return keys | (set(KEYS) - {""} if table == "" else set())


# env suffix -> (table path, key); LDAP_* shape the first directory.
ENV_KEYS = {
    "DATABASE_URL": ((), "database_url"),
    "PHOTO_ATTRIBUTES": ((), "photo_attributes"),
    "SIZE": ((), "size"),
    "CROP": ((), "crop"),
    "PHOTO_REMOVED": ((), "photo_removed"),
    "EXCLUDE_USERS": ((), "exclude_users"),
    "EXCLUDE_GROUPS": ((), "exclude_groups"),
    "PREFER": ((), "prefer"),
    "HTTP_PHOTOS_URL": (("http_photos",), "url"),
    "HTTP_PHOTOS_USERNAME": (("http_photos",), "username"),
    "HTTP_PHOTOS_PASSWORD": (("http_photos",), "password"),
    "HTTP_PHOTOS_TOKEN": (("http_photos",), "token"),
    "HTTP_PHOTOS_CA_FILE": (("http_photos",), "ca_file"),
    "HTTP_PHOTOS_VERIFY_TLS": (("http_photos",), "verify_tls"),
    "HTTP_PHOTOS_TIMEOUT": (("http_photos",), "timeout"),
    "HTTP_PHOTOS_POSITION": (("http_photos",), "position"),
    "LOGIN_DEBOUNCE_SECONDS": ((), "login_debounce_seconds"),
    "MAX_PHOTO_BYTES": ((), "max_photo_bytes"),
    "MAX_PHOTO_PIXELS": ((), "max_photo_pixels"),
    "LOG_LEVEL": ((), "log_level"),
    "LOG_FORMAT": ((), "log_format"),
    "TRUSTED_PROXIES": ((), "trusted_proxies"),
    "JIRA_URL": (("jira",), "url"),
    "JIRA_USERNAME": (("jira",), "username"),
    "JIRA_PASSWORD": (("jira",), "password"),
    "JIRA_TOKEN": (("jira",), "token"),
    "JIRA_MAX_CONCURRENCY": (("jira",), "max_concurrency"),
    "JIRA_MAX_REQUESTS_PER_SECOND": (("jira",), "max_requests_per_second"),
    "JIRA_LIMITS_SCOPE": (("jira",), "limits_scope"),
    "JIRA_TIMEOUT": (("jira",), "timeout"),
    "JIRA_CONNECT_TIMEOUT": (("jira",), "connect_timeout"),
    "JIRA_MAX_RETRIES": (("jira",), "max_retries"),
    "JIRA_USER_GROUPS": (("jira",), "user_groups"),
    "JIRA_CA_FILE": (("jira",), "ca_file"),
    "JIRA_VERIFY_TLS": (("jira",), "verify_tls"),
    "WEBHOOK_SECRET": (("webhook",), "secret"),
    "WEBHOOK_PREVIOUS_SECRET": (("webhook",), "previous_secret"),
    "WEBHOOK_ALLOW_UNAUTHENTICATED": (("webhook",), "allow_unauthenticated"),
    "WEBHOOK_MAX_BODY_BYTES": (("webhook",), "max_body_bytes"),
    "ADMIN_TOKEN": (("admin",), "token"),
    "ADMIN_PREVIOUS_TOKEN": (("admin",), "previous_token"),
    "SWEEP_SCHEDULE": (("sweep",), "schedule"),
    "METRICS_REQUIRE_ADMIN": (("metrics",), "require_admin"),
    "WORKER_THREADS": (("worker",), "threads"),
    "WORKER_POLL_SECONDS": (("worker",), "poll_seconds"),
    "WORKER_LEASE_SECONDS": (("worker",), "lease_seconds"),
    "WORKER_MAX_ATTEMPTS": (("worker",), "max_attempts"),
    "WORKER_RETRY_BASE_SECONDS": (("worker",), "retry_base_seconds"),
    "WORKER_RETRY_MAX_SECONDS": (("worker",), "retry_max_seconds"),
    "WORKER_START_IN_WEB": (("worker",), "start_in_web"),
    "LDAP_NAME": (("directories",), "name"),
    "LDAP_URL": (("directories",), "urls"),
    "LDAP_BIND_DN": (("directories",), "bind_dn"),
    "LDAP_BIND_PASSWORD": (("directories",), "bind_password"),
    "LDAP_BASE_DN": (("directories",), "base_dn"),
    "LDAP_USER_FILTER": (("directories",), "user_filter"),
    "LDAP_USERNAME_ATTRIBUTE": (("directories",), "username_attribute"),
    "LDAP_PHOTO_ATTRIBUTES": (("directories",), "photo_attributes"),
    "LDAP_CA_FILE": (("directories",), "ca_file"),
    "LDAP_START_TLS": (("directories",), "start_tls"),
    "LDAP_VERIFY_TLS": (("directories",), "verify_tls"),
    "LDAP_CONNECT_TIMEOUT": (("directories",), "connect_timeout"),
    "LDAP_TIMEOUT": (("directories",), "timeout"),
    "LDAP_POOL_SIZE": (("directories",), "pool_size"),
}
ENV_SECRETS = {
    "JIRA_PASSWORD",
    "JIRA_TOKEN",
    "WEBHOOK_SECRET",
    "WEBHOOK_PREVIOUS_SECRET",
    "ADMIN_TOKEN",
    "ADMIN_PREVIOUS_TOKEN",
    "LDAP_BIND_PASSWORD",
    "HTTP_PHOTOS_PASSWORD",
    "HTTP_PHOTOS_TOKEN",
}
