"""The sync rules (the README's table "The rules") as data in, decision out: no I/O.

``decide(facts)`` looks at what is known of one user (the directory entry, Jira's view of the
user, what this service stored, what was asked) and returns a Plan: either "read this first"
(Jira's view, the stored state, a fresh view where a sweep's bulk read cannot justify a write),
or the outcome with what Jira needs to get there. app/sync.py reads what a plan asks for and
carries the final plan out; tests/test_rules.py states every rule as a row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import Enum

from .directory import DirectoryEntry
from .jira import JiraUser
from .outcomes import (
    DISABLED,
    EXCLUDED,
    NO_PHOTO,
    NOT_IN_DIRECTORY,
    NOT_IN_JIRA,
    PHOTO_REMOVED,
    RESTORED,
    UNCHANGED,
    UPDATED,
    Outcome,
)
from .states import UserState


class Unknown(Enum):
    """Not read yet (as opposed to None: read, and there is none)."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


class Need(Enum):
    JIRA_VIEW = "read Jira's view of the user"
    STATE = "read what this service stored of the user"
    FRESH_JIRA_VIEW = "read Jira's view again: a sweep's bulk read may predate a sync since"


@dataclass(frozen=True)
class Facts:
    entry: DirectoryEntry | None  # the first directory holding the user (None: none does)
    jira_user: JiraUser | None | Unknown = UNKNOWN
    state: UserState | None | Unknown = UNKNOWN
    hinted: bool = False  # jira_user is a sweep's bulk read: trusted to say "unchanged", never to write
    force: bool = False
    retried: bool = False  # a queued job's later attempt, or a sync after a failed one
    disabled: bool = False  # photo_attributes is empty
    excluded: str | None = None  # why the user keeps their own picture (app/exclusions.py), if so
    photo_removed: str = "keep"  # the setting: what to do once the directory photo is gone
    attributes: tuple[str, ...] = ()  # the entry's directory's photo attributes, for the reason
    photo_hash: str | None = None  # of the raw directory bytes (Facts.of computes it)

    @classmethod
    def of(cls, entry: DirectoryEntry | None, **known) -> Facts:
        """The facts with the photo's hash: of the raw bytes, so that an unchanged photo is
        known before any decoding."""
        photo = entry.photo if entry is not None else None
        if entry is not None and entry.photo_sha256:  # known unchanged at its source, not sent again
            return cls(entry, photo_hash=entry.photo_sha256, **known)
        return cls(entry, photo_hash=hashlib.sha256(photo).hexdigest() if photo is not None else None, **known)


@dataclass(frozen=True)
class Plan:
    outcome: Outcome | None = None  # None while something must be read first
    need: Need | None = None
    reason: str | None = None
    avatar_id: str | None = None  # the avatar Jira shows once the plan is carried out, if known
    reuse: str | None = None  # ours, to select again if Jira still has it...
    reason_if_gone: str | None = None  # ...else uploaded again, for this reason
    finish_interrupted: bool = False  # an upload of this photo may have been cut short: use it
    upload: bool = False  # decode, upload, select (unless reused or finished)
    reset: str | None = None  # photo removed: select "user_upload" (else the default) or "default"
    photo_hash: str | None = None
    stale: tuple[str, ...] = field(default=())  # avatars of ours to delete once recorded


def decide(facts: Facts) -> Plan:
    if facts.disabled:  # nothing is touched
        return Plan(DISABLED, reason="photo_attributes is empty")
    if facts.excluded:  # nothing of theirs is touched, not even our old avatars
        return Plan(EXCLUDED, reason=facts.excluded)
    entry = facts.entry
    if entry is None:
        return Plan(NOT_IN_DIRECTORY)
    if not entry.has_photo:
        return _without_photo(facts)
    if facts.jira_user is UNKNOWN:
        return Plan(need=Need.JIRA_VIEW)
    if facts.jira_user is None:
        return Plan(NOT_IN_JIRA, photo_hash=facts.photo_hash)
    if facts.state is UNKNOWN:
        return Plan(need=Need.STATE)
    return _with_photo(facts, facts.jira_user, facts.state)


def _with_photo(facts: Facts, jira_user: JiraUser, state: UserState | None) -> Plan:
    """The user has a directory photo and is in Jira: unchanged, restored or updated."""
    photo_hash = facts.photo_hash
    ours = state.avatar_id if state else None
    same_photo = state is not None and state.photo_sha256 == photo_hash and ours is not None
    reuse = reason_if_gone = None
    if same_photo and not facts.force:
        if jira_user.avatar_id == ours:  # unchanged: no write, no decode
            return Plan(UNCHANGED, avatar_id=ours, photo_hash=photo_hash, stale=stale_after(state, ours))
        if facts.hinted:
            return Plan(need=Need.FRESH_JIRA_VIEW)
        # the user picked another picture: ours is shown again (theirs is never deleted)
        outcome, reason = RESTORED, f"user had selected avatar {jira_user.avatar_id}"
        reuse, reason_if_gone = ours, f"avatar {ours} was deleted in Jira"
    elif same_photo:
        outcome, reason = UPDATED, "forced"
    elif ours is None:
        outcome, reason = UPDATED, None
    else:
        outcome, reason = UPDATED, "directory photo changed"
    # A previous run uploaded this very photo and died before recording it: finish that job
    # (the store marks an upload as begun; a queued job's retry is itself the sign).
    marked = state is not None and state.pending_sha256 == photo_hash
    return Plan(
        outcome,
        reason=reason,
        reuse=reuse,
        reason_if_gone=reason_if_gone,
        finish_interrupted=not facts.force and (marked or facts.retried),
        upload=True,
        photo_hash=photo_hash,
    )


def _without_photo(facts: Facts) -> Plan:
    """No directory photo: hands off the user's own picture. With photo_removed other than
    "keep", a picture of ours still shown is replaced (the user's own latest upload, or Jira's
    default, selected explicitly) and ours are deleted once that is recorded."""
    assert facts.entry is not None
    no_photo = Plan(NO_PHOTO, reason=f"no {'/'.join(facts.attributes)} in {facts.entry.directory}")
    if facts.photo_removed == "keep":
        return no_photo
    if facts.state is UNKNOWN:
        return Plan(need=Need.STATE)
    state = facts.state
    # every avatar of ours Jira may still have: the one selected, and any a failed delete left
    ours = tuple(dict.fromkeys(a for a in ([state.avatar_id, *state.created_avatar_ids] if state else []) if a))
    if not ours:  # the steady state after a removal: nothing to write
        return no_photo
    if facts.jira_user is UNKNOWN:
        return Plan(need=Need.JIRA_VIEW)
    if facts.jira_user is None:
        return Plan(NOT_IN_JIRA)
    if facts.hinted:  # deleting on a bulk read's word could delete the picture shown
        return Plan(need=Need.FRESH_JIRA_VIEW)
    shown = facts.jira_user.avatar_id
    if shown in ours:
        return Plan(PHOTO_REMOVED, reset=facts.photo_removed, stale=ours)
    if state is not None and state.avatar_id is None:  # leftovers of ours, the user's picture shown
        return replace(no_photo, avatar_id=shown, stale=ours)
    return Plan(PHOTO_REMOVED, reason=f"kept: the user's own choice, avatar {shown}", avatar_id=shown, stale=ours)


def stale_after(state: UserState | None, shown: str | None) -> tuple[str, ...]:
    """Ours besides the one shown, deleted once the outcome is recorded (on an unchanged sync
    too, where a delete failed before): none in the steady state."""
    if state is None or shown is None:
        return ()
    return tuple(a for a in state.created_avatar_ids if a != shown)
