"""Logging for people and for log shippers.

``log_format = "text"`` (the default) writes one line per record; ``"json"`` one JSON object
per line, gunicorn's access and error logs included (``GunicornLogger``), so a shipper needs no
parser. A sync's line carries its fields (user, outcome, reason, source, duration_ms) as keys.

Nothing secret is logged: the webhook's ``?token=`` is cut out of every request line, and
usernames are escaped where they enter a text line (sync.loggable).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

from gunicorn.glogging import Logger as _GunicornLogger

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
# Fields a record may carry (logging's ``extra``) that the JSON form keeps.
FIELDS = (
    "user",
    "outcome",
    "reason",
    "source",
    "duration_ms",
    "dry_run",
    "sweep_id",
    "remote",
    "method",
    "path",
    "status",
    "bytes",
    "user_agent",
)
_TOKEN = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """A request line or query string without the webhook token's value."""
    return _TOKEN.sub(r"\1[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def setup(level: str, log_format: str, stream=None) -> None:
    """The root logger's one handler on stderr, in the chosen format (again: replaced)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "avatar_sync", False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.avatar_sync = True  # type: ignore[attr-defined]  # ours: found again by setup()
        for other in list(root.handlers):  # basicConfig's, or an earlier default
            if (
                isinstance(other, logging.StreamHandler)
                and not getattr(other, "avatar_sync", False)
                and getattr(other, "stream", None) in (sys.stderr, sys.stdout)
            ):
                root.removeHandler(other)
        root.addHandler(handler)
    handler.setFormatter(formatter(log_format))
    root.setLevel(level)
    # Alembic says "Context impl SQLiteImpl." at INFO whenever a process first checks the
    # schema: noise in every worker's start, kept for DEBUG. A schema the service refuses is
    # its own error line, and `db upgrade` prints what it changed.
    logging.getLogger("alembic").setLevel(logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING)


class _SyncLineFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "outcome", None) is None


def quiet_syncs() -> None:
    """No line per sync on stderr: the CLI prints each outcome itself, and would say it twice."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_SyncLineFilter())


class GunicornLogger(_GunicornLogger):
    """gunicorn's logger with the service's format, and the webhook token redacted."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        self.log_format = os.environ.get("AVATAR_SYNC_LOG_FORMAT", "text").lower()
        if self.log_format == "json":
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(JsonFormatter())

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "q"):
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        return atoms

    def access(self, resp, req, environ, request_time):
        if self.log_format != "json":
            return super().access(resp, req, environ, request_time)
        if not self.access_log_enabled:
            return
        a = self.atoms(resp, req, environ, request_time)
        self.access_log.info(
            "%s %s",
            a["m"],
            redact(a["U"] + ("?" + a["q"] if a["q"] else "")),
            extra={
                "remote": a["h"],
                "method": a["m"],
                "path": a["U"],
                "status": a["s"],
                "bytes": a["B"],
                "duration_ms": round(request_time.total_seconds() * 1000, 1),
                "user_agent": a["a"],
            },
        )
