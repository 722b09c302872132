"""Settings: a TOML file (AVATAR_SYNC_CONFIG) overridden by AVATAR_SYNC_* environment variables.

Every secret may also come from a file: ``password_file = "..."`` in TOML, or the env
variable with ``_FILE`` appended. Anything invalid raises ConfigError naming the key, so
start-up stops with one clear line instead of failing at the first request.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .config_keys import accepted
from .config_source import ENV_PREFIX, ConfigError, Reader, apply_env

DEFAULT_PHOTO_ATTRIBUTES = ("thumbnailPhoto", "jpegPhoto")
# Four slashes: an absolute path. sqlite:///var/... would be var/... under the current directory.
# A decode takes about 8 MB per megapixel (measured: a 40 MP PNG of 170 KB, 310 MB). 4 MP (a
# 2000 x 2000 photo) is 32 MB; with two decodes at a time per process (sync.DECODE_SLOTS), two
# gunicorn workers and a separate worker stay under 200 MB of decoding in all.
DEFAULT_MAX_PHOTO_PIXELS = 4_000_000
DEFAULT_DATABASE_URL = "sqlite:////var/lib/jira-avatar-sync/state.db"


@dataclass(frozen=True)
class DirectorySettings:
    name: str
    urls: tuple[str, ...]
    base_dn: str
    bind_dn: str = ""
    bind_password: str = field(default="", repr=False)
    user_filter: str = "(objectClass=inetOrgPerson)"
    username_attribute: str = "uid"
    photo_attributes: tuple[str, ...] | None = None  # None: use the global list
    ca_file: str = ""
    start_tls: bool = False
    verify_tls: bool = True
    connect_timeout: int = 3  # ldap3 needs ints (struct.pack in 2.9.1)
    timeout: int = 10
    pool_size: int = 4


@dataclass(frozen=True)
class JiraSettings:
    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    max_concurrency: int = 4
    max_requests_per_second: float = 0
    limits_scope: str = "process"  # or "cluster": the two limits above for all replicas (PostgreSQL)
    connect_timeout: float = 5
    timeout: float = 30
    max_retries: int = 4
    ca_file: str = ""
    verify_tls: bool = True
    user_groups: tuple[str, ...] = ()  # whose members a sweep reads in bulk (default: application access)


@dataclass(frozen=True)
class HttpPhotoSettings:
    """[http_photos]: an HTTP server of photos, a link in the chain beside the LDAP attributes.
    Its field names are those the HTTP layer (app/jira_http.py) reads of JiraSettings too."""

    url: str  # with {username}: https://photos.example/{username}.jpg
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    ca_file: str = ""
    verify_tls: bool = True
    connect_timeout: float = 5
    timeout: float = 10
    position: str = "last"  # in the chain: "first" (before the LDAP attributes) or "last"
    max_concurrency: int = 8  # connections kept per process


@dataclass(frozen=True)
class WebhookSettings:
    secret: str = field(default="", repr=False)
    previous_secret: str = field(default="", repr=False)  # still accepted while Jira's senders switch
    allow_unauthenticated: bool = False
    max_body_bytes: int = 64 * 1024

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret, self.previous_secret) if s)


@dataclass(frozen=True)
class WorkerSettings:
    threads: int = 2  # per process (each gunicorn worker, or `jira-avatar-sync worker`)
    poll_seconds: float = 1.0  # how soon another process's enqueue is noticed
    lease_seconds: float = 120.0  # a dead worker's job is taken again after this
    max_attempts: int = 10
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    start_in_web: bool = True  # run the workers inside each gunicorn worker


@dataclass(frozen=True)
class AdminSettings:
    token: str = field(default="", repr=False)
    previous_token: str = field(default="", repr=False)  # still accepted during a rotation

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t for t in (self.token, self.previous_token) if t)


@dataclass(frozen=True)
class Settings:
    jira: JiraSettings
    directories: tuple[DirectorySettings, ...]
    database_url: str = DEFAULT_DATABASE_URL
    photo_attributes: tuple[str, ...] = DEFAULT_PHOTO_ATTRIBUTES
    size: int = 256
    crop: str = "center"  # or "upper": a tall portrait keeps its top (where the head is)
    photo_removed: str = "keep"  # or "user_upload", "default": when the directory photo goes away
    exclude_users: frozenset[str] = frozenset()  # lower case, as user_key(): users who keep their own picture
    exclude_groups: tuple[str, ...] = ()  # Jira groups whose members keep theirs
    prefer: str = "first"  # or "largest": which photo of the chain (LDAP attributes, HTTP) wins
    http_photos: HttpPhotoSettings | None = None
    login_debounce_seconds: int = 600
    max_photo_bytes: int = 5 * 1024 * 1024
    max_photo_pixels: int = DEFAULT_MAX_PHOTO_PIXELS
    webhook: WebhookSettings = WebhookSettings()
    admin: AdminSettings = AdminSettings()
    worker: WorkerSettings = WorkerSettings()
    sweep_schedule: dt_time | None = None  # daily, local time: "01:11"
    metrics_require_admin: bool = False
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line, for log shippers
    trusted_proxies: int = 0  # reverse proxies in front whose X-Forwarded-For is believed

    @property
    def sync_disabled(self) -> bool:
        """An empty global attribute list stops synchronisation, overrides included."""
        return not self.photo_attributes

    def attributes_for(self, directory: DirectorySettings) -> tuple[str, ...]:
        return directory.photo_attributes or self.photo_attributes


# --- reading -------------------------------------------------------------------------------


def load_settings(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (``path`` or $AVATAR_SYNC_CONFIG), apply env overrides, validate."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError("AVATAR_SYNC_CONFIG", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("AVATAR_SYNC_CONFIG", f"{path} is not valid TOML: {exc}") from None
    return settings_from_dict(apply_env(data, env), env)


def settings_from_dict(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    env = {} if env is None else env
    r = Reader(data, "", env)
    r.reject_unknown(accepted(""))
    photo_attributes = r.attr_list("photo_attributes", DEFAULT_PHOTO_ATTRIBUTES)
    dirs_raw = data.get("directories", [])
    if not isinstance(dirs_raw, list):
        raise ConfigError("directories", "must be a list of tables ([[directories]])")
    directories = tuple(_directory(d, i, env) for i, d in enumerate(dirs_raw))
    if not directories:
        raise ConfigError("directories", "at least one directory is required ([[directories]] or AVATAR_SYNC_LDAP_URL)")
    names = [d.name for d in directories]
    if len(set(names)) != len(names):
        raise ConfigError("directories.name", f"names must be unique, got {names}")
    level = r.string("log_level", "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    log_format = r.choice("log_format", "text", ("text", "json"))
    db = _database_url(r.string("database_url", DEFAULT_DATABASE_URL))
    jira = _jira(Reader(r.table("jira"), "jira.", env))
    if jira.limits_scope == "cluster" and not db.startswith("postgresql"):
        raise ConfigError(
            "jira.limits_scope",
            "cluster needs a PostgreSQL database_url: the replicas "
            "share the budget through it (with SQLite, keep process)",
        )
    return Settings(
        jira=jira,
        directories=directories,
        database_url=db,
        photo_attributes=photo_attributes,
        # 16..500: Jira clamps temporary avatars to 500 px and stores at most 256 px.
        size=r.integer("size", 256, 16, 500),
        crop=r.choice("crop", "center", ("center", "upper")),
        photo_removed=r.choice("photo_removed", "keep", ("keep", "user_upload", "default")),
        exclude_users=frozenset(name.lower() for name in r.str_list("exclude_users", []) or ()),
        exclude_groups=tuple(r.str_list("exclude_groups", []) or ()),
        prefer=r.choice("prefer", "first", ("first", "largest")),
        http_photos=_http_photos(Reader(r.table("http_photos"), "http_photos.", env)),
        login_debounce_seconds=r.integer("login_debounce_seconds", 600, 0, 7 * 86400),
        max_photo_bytes=r.integer("max_photo_bytes", 5 * 1024 * 1024, 1024, 100 * 1024 * 1024),
        max_photo_pixels=r.integer("max_photo_pixels", DEFAULT_MAX_PHOTO_PIXELS, 1, 200_000_000),
        webhook=_webhook(Reader(r.table("webhook"), "webhook.", env)),
        admin=_admin(Reader(r.table("admin"), "admin.", env)),
        worker=_worker(Reader(r.table("worker"), "worker.", env)),
        sweep_schedule=_schedule(Reader(r.table("sweep"), "sweep.", env)),
        metrics_require_admin=_metrics(Reader(r.table("metrics"), "metrics.", env)),
        log_level=level,
        log_format=log_format,
        trusted_proxies=r.integer("trusted_proxies", 0, 0, 10),
    )


def _database_url(url: str) -> str:
    """An SQLAlchemy URL whose SQLite file, if any, is an absolute path: a relative one would
    resolve against whatever directory a command runs in, and `check` or a sweep started
    elsewhere would quietly work on a fresh, empty state."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            "database_url",
            f"must be an SQLAlchemy URL such as {DEFAULT_DATABASE_URL} or postgresql://user@host/db, got {url!r}",
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError("database_url", f"must be sqlite:// or postgresql://, got {backend}://")
    database = parsed.database or ""
    if (
        backend == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("file:")
        and not os.path.isabs(database)
    ):
        raise ConfigError(
            "database_url",
            f"the SQLite path {database!r} is relative; give an absolute "
            f"path with four slashes, such as sqlite:////var/lib/jira-avatar-sync/state.db",
        )
    return url


def _jira(r: Reader) -> JiraSettings:
    r.reject_unknown(accepted("jira"))
    url = r.string("url", "").rstrip("/")
    if not url:
        raise ConfigError("jira.url", "is required (AVATAR_SYNC_JIRA_URL)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("jira.url", f"must be an http(s) URL, got {url!r}")
    username, password, token = r.string("username", ""), r.secret("password"), r.secret("token")
    if not token and not (username and password):
        raise ConfigError("jira.username", "set jira.username and jira.password, or jira.token")
    ca_file = r.string("ca_file", "")
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError("jira.ca_file", f"no such file: {ca_file}")
    return JiraSettings(
        url=url,
        username=username,
        password=password,
        token=token,
        max_concurrency=r.integer("max_concurrency", 4, 1, 256),
        max_requests_per_second=r.number("max_requests_per_second", 0, 0, 10_000),
        limits_scope=r.choice("limits_scope", "process", ("process", "cluster")),
        connect_timeout=r.number("connect_timeout", 5, 0.1, 120),
        timeout=r.number("timeout", 30, 0.1, 600),
        max_retries=r.integer("max_retries", 4, 0, 20),
        ca_file=ca_file,
        verify_tls=r.boolean("verify_tls", True),
        user_groups=tuple(r.str_list("user_groups", []) or ()),
    )


def _http_photos(r: Reader) -> HttpPhotoSettings | None:
    r.reject_unknown(accepted("http_photos"))
    url = r.string("url", "")
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "{username}" not in url:
        raise ConfigError("http_photos.url", f"must be an http(s) URL with {{username}} in it, got {url!r}")
    ca_file = r.string("ca_file", "")
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError("http_photos.ca_file", f"no such file: {ca_file}")
    return HttpPhotoSettings(
        url=url,
        username=r.string("username", ""),
        password=r.secret("password"),
        token=r.secret("token"),
        ca_file=ca_file,
        verify_tls=r.boolean("verify_tls", True),
        timeout=r.number("timeout", 10, 0.1, 600),
        position=r.choice("position", "last", ("first", "last")),
    )


def _webhook(r: Reader) -> WebhookSettings:
    r.reject_unknown(accepted("webhook"))
    return WebhookSettings(
        secret=r.secret("secret"),
        previous_secret=r.secret("previous_secret"),
        allow_unauthenticated=r.boolean("allow_unauthenticated", False),
        max_body_bytes=r.integer("max_body_bytes", 64 * 1024, 256, 16 * 1024 * 1024),
    )


def _admin(r: Reader) -> AdminSettings:
    r.reject_unknown(accepted("admin"))
    return AdminSettings(token=r.secret("token"), previous_token=r.secret("previous_token"))


def _worker(r: Reader) -> WorkerSettings:
    r.reject_unknown(accepted("worker"))
    return WorkerSettings(
        threads=r.integer("threads", 2, 0, 64),
        poll_seconds=r.number("poll_seconds", 1.0, 0.05, 60),
        lease_seconds=r.number("lease_seconds", 120.0, 1, 86400),
        max_attempts=r.integer("max_attempts", 10, 1, 1000),
        retry_base_seconds=r.number("retry_base_seconds", 5.0, 0.01, 86400),
        retry_max_seconds=r.number("retry_max_seconds", 3600.0, 0.01, 7 * 86400),
        start_in_web=r.boolean("start_in_web", True),
    )


def _metrics(r: Reader) -> bool:
    r.reject_unknown(accepted("metrics"))
    return r.boolean("require_admin", False)


def _schedule(r: Reader) -> dt_time | None:
    r.reject_unknown(accepted("sweep"))
    text = r.string("schedule", "")
    if not text:
        return None
    try:
        hour, minute = (int(p) for p in text.split(":"))
        return dt_time(hour, minute)
    except ValueError:
        raise ConfigError("sweep.schedule", f"must be a daily time HH:MM such as 01:11, got {text!r}") from None


def _directory(raw: Any, index: int, env: Mapping[str, str]) -> DirectorySettings:
    prefix = f"directories[{index}]."
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix.rstrip("."), "must be a table")
    r = Reader(raw, prefix, env)
    r.reject_unknown(accepted("directories"))
    urls = r.str_list("urls", None) or ([r.string("url", "")] if raw.get("url") else [])
    if not urls:
        raise ConfigError(prefix + "urls", "at least one ldap:// or ldaps:// URL is required")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ConfigError(prefix + "urls", f"{url!r} is not an ldap:// or ldaps:// URL")
        try:
            _ = parts.port  # urlsplit checks the port only when asked
        except ValueError:
            raise ConfigError(prefix + "urls", f"{url!r} has an invalid port") from None
    base_dn = r.string("base_dn", "")
    if not base_dn:
        raise ConfigError(prefix + "base_dn", "is required")
    user_filter = r.string("user_filter", "(objectClass=inetOrgPerson)")
    if not (
        user_filter.startswith("(") and user_filter.endswith(")") and user_filter.count("(") == user_filter.count(")")
    ):
        raise ConfigError(prefix + "user_filter", f"{user_filter!r} is not a parenthesised LDAP filter")
    username_attribute = r.string("username_attribute", "uid")
    if not username_attribute.replace("-", "").isalnum():
        raise ConfigError(prefix + "username_attribute", f"{username_attribute!r} is not an attribute name")
    ca_file = r.string("ca_file", "")
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError(prefix + "ca_file", f"no such file: {ca_file}")
    return DirectorySettings(
        name=r.string("name", f"directory{index + 1}"),
        urls=tuple(urls),
        base_dn=base_dn,
        bind_dn=r.string("bind_dn", ""),
        bind_password=r.secret("bind_password"),
        user_filter=user_filter,
        username_attribute=username_attribute,
        photo_attributes=r.attr_list("photo_attributes", None) or None,
        ca_file=ca_file,
        start_tls=r.boolean("start_tls", False),
        verify_tls=r.boolean("verify_tls", True),
        connect_timeout=r.integer("connect_timeout", 3, 1, 120),
        timeout=r.integer("timeout", 10, 1, 600),
        pool_size=r.integer("pool_size", 4, 1, 64),
    )
