"""Where settings come from, below the Settings classes: AVATAR_SYNC_* environment variables
mapped onto the TOML file's keys, secrets read from files, and typed reading of a TOML table
whose every error names the full key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "AVATAR_SYNC_"


class ConfigError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(f"configuration error: {key}: {message}")
        self.key = key


# --- environment ---------------------------------------------------------------------------

# env suffix -> (table path, key); LDAP_* shape the first directory.
_ENV_KEYS = {
    "DATABASE_URL": ((), "database_url"),
    "PHOTO_ATTRIBUTES": ((), "photo_attributes"),
    "SIZE": ((), "size"),
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
_SECRETS = {
    "JIRA_PASSWORD",
    "JIRA_TOKEN",
    "WEBHOOK_SECRET",
    "WEBHOOK_PREVIOUS_SECRET",
    "ADMIN_TOKEN",
    "ADMIN_PREVIOUS_TOKEN",
    "LDAP_BIND_PASSWORD",
}


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if isinstance(data.get("directories"), list):
        data["directories"] = [dict(d) if isinstance(d, dict) else d for d in data["directories"]]
    for suffix, (table, key) in _ENV_KEYS.items():
        name = ENV_PREFIX + suffix
        value = env.get(name)
        if suffix in _SECRETS and env.get(name + "_FILE"):
            value = read_secret_file(name + "_FILE", env[name + "_FILE"])
        if value is None:
            continue
        if table == ("directories",):
            dirs = data.setdefault("directories", [])
            if not isinstance(dirs, list):
                raise ConfigError("directories", "must be a list of tables ([[directories]])")
            if not dirs:
                dirs.append({"name": "ldap"})
            target = dirs[0]
        elif table:
            target = data.setdefault(table[0], {})
        else:
            target = data
        if key in ("urls", "photo_attributes", "user_groups"):  # comma-separated lists
            target[key] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            target[key] = value
        if suffix in _SECRETS:
            target.pop(key + "_file", None)  # the environment wins over the file's *_file too
    return data


def read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from None


class Reader:
    """Typed access to one TOML table; env strings are converted, errors name the full key."""

    def __init__(self, data: Mapping[str, Any], prefix: str, env: Mapping[str, str]):
        if not isinstance(data, Mapping):
            raise ConfigError(prefix.rstrip("."), "must be a table")
        self.data, self.prefix, self.env = data, prefix, env

    def _fail(self, key: str, msg: str):
        raise ConfigError(self.prefix + key, msg)

    def reject_unknown(self, known: set[str]) -> None:
        unknown = sorted(set(self.data) - known)
        if unknown:
            self._fail(unknown[0], f"unknown key (known: {', '.join(sorted(known))})")

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, Mapping):
            self._fail(key, "must be a table")
        return value

    def string(self, key: str, default: str) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            self._fail(key, "must be a string")
        return value.strip()

    def secret(self, key: str) -> str:
        if self.data.get(key + "_file"):
            return read_secret_file(self.prefix + key + "_file", self.string(key + "_file", ""))
        value = self.data.get(key, "")
        if not isinstance(value, str):
            self._fail(key, "must be a string")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        return self._ranged(key, default, low, high, int, "a whole number")

    def number(self, key: str, default: float, low: float, high: float) -> float:
        return float(self._ranged(key, default, low, high, float, "a number"))

    def _ranged(self, key: str, default, low, high, kind: type, what: str):
        """A number within [low, high]; from the environment it arrives as a string."""
        value = self.data.get(key, default)
        if isinstance(value, str):
            try:
                value = kind(value.strip())
            except ValueError:
                self._fail(key, f"must be {what}, got {value!r}")
        allowed = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            self._fail(key, f"must be {what}")
        if not low <= value <= high:
            self._fail(key, f"must be between {low} and {high}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            self._fail(key, f"must be true or false, got {value!r}")
        if not isinstance(value, bool):
            self._fail(key, "must be true or false")
        return value

    def str_list(self, key: str, default):
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._fail(key, "must be a list of strings")
        return [v.strip() for v in value if v.strip()]

    def attr_list(self, key: str, default) -> tuple[str, ...]:
        values = self.str_list(key, default)
        if values is None:
            return ()
        for v in values:
            if not v.replace("-", "").replace(";", "").isalnum():
                self._fail(key, f"{v!r} is not an attribute name")
        return tuple(values)
