"""What a sync comes to: SyncResult (the outcome a door answers and logs), Verdict (a result with
what recording it needs, app/sync.py's attempt() to record()), and NoPreview."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .directory import PhotoTag
from .usernames import loggable


class NoPreview(Exception):
    """No picture to preview: ``status`` 404 (no photo, no entry) or 422 (not a usable image)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class SyncResult:
    username: str
    outcome: str
    reason: str | None = None
    avatar_id: str | None = None
    directory: str | None = None
    dry_run: bool = False
    retryable: bool = False  # for failed: trying again later may help
    source: str | None = None  # login, created, updated, sweep, admin
    duration_ms: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def line(self) -> str:
        """``user: outcome (reason)``, the user's name escaped so that it cannot forge a line."""
        return f"{loggable(self.username)}: {self.outcome}" + (f" ({self.reason})" if self.reason else "")


@dataclass
class Verdict:
    """What a sync attempt came to: the result, and what recording it needs."""

    result: SyncResult
    marker: str | None = None  # the directory entry's change marker
    photo_hash: str | None = None
    stale: list[str] = field(default_factory=list)  # avatars of ours to delete once the new one is recorded
    photo_tag: PhotoTag | None = None  # the photo server's new ETag, stored with the outcome
