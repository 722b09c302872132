"""Every rule of the README's table "The rules" as a row: situation -> plan. Pure: no server,
no database, milliseconds. (tests/test_sync.py proves the same rules end to end against real
slapd and the Jira emulator.)"""
from __future__ import annotations

import hashlib
from typing import Any

import pytest

from app.directory import DirectoryEntry
from app.jira import JiraUser
from app.outcomes import Outcome
from app.rules import UNKNOWN, Facts, Need, Plan, decide
from app.states import UserState

PHOTO, OTHER_PHOTO = b"\xff\xd8 a photo", b"\xff\xd8 another photo"
HASH = hashlib.sha256(PHOTO).hexdigest()
ENTRY = DirectoryEntry("corp-ad", "CN=jdoe", PHOTO, "thumbnailPhoto", "uSNChanged=7")
NO_PHOTO_ENTRY = DirectoryEntry("corp-ad", "CN=jdoe", None, None, "uSNChanged=7")


def jira(avatar_id: str = "10122", custom: bool = False) -> JiraUser:
    return JiraUser("jdoe", "JIRAUSER10100", avatar_id, custom)


def ours(avatar_id: str = "500", photo: bytes = PHOTO, created=("500",), pending: bytes | None = None,
         outcome: str = "updated") -> UserState:
    return UserState("jdoe", photo_sha256=hashlib.sha256(photo).hexdigest(), avatar_id=avatar_id,
                     created_avatar_ids=list(created), last_outcome=outcome,
                     pending_sha256=hashlib.sha256(pending).hexdigest() if pending else None,
                     pending_avatar_id="600" if pending else None)


def facts(entry=ENTRY, **kw) -> Facts:
    kw.setdefault("attributes", ("thumbnailPhoto", "jpegPhoto"))
    return Facts.of(entry, **kw)


WRITE: dict[str, Any] = {"upload": True, "photo_hash": HASH}

ROWS = [
    # (the situation, the facts, what the plan must say)
    ("photo_attributes is empty: nothing is touched",
     facts(disabled=True), Plan(Outcome.DISABLED, reason="photo_attributes is empty")),
    ("in no directory", facts(entry=None), Plan(Outcome.NOT_IN_DIRECTORY)),
    ("no directory photo: the user's own picture stays",
     facts(entry=NO_PHOTO_ENTRY), Plan(Outcome.NO_PHOTO, reason="no thumbnailPhoto/jpegPhoto in corp-ad")),
    ("a photo: Jira's view is read first, and only then", facts(), Plan(need=Need.JIRA_VIEW)),
    ("not in Jira", facts(jira_user=None), Plan(Outcome.NOT_IN_JIRA, photo_hash=HASH)),
    ("in Jira: what this service stored is read next", facts(jira_user=jira()), Plan(need=Need.STATE)),
    ("first sync: upload and select",
     facts(jira_user=jira(), state=None), Plan(Outcome.UPDATED, **WRITE)),
    ("first sync after a failed one: an upload of it may have been cut short",
     facts(jira_user=jira(), state=None, retried=True), Plan(Outcome.UPDATED, finish_interrupted=True, **WRITE)),
    ("the directory photo changed: upload, select, then ours before are deleted",
     facts(jira_user=jira("500", custom=True), state=ours(photo=OTHER_PHOTO)),
     Plan(Outcome.UPDATED, reason="directory photo changed", **WRITE)),
    ("photo unchanged and ours still shown: nothing, not even a decode",
     facts(jira_user=jira("500", custom=True), state=ours()),
     Plan(Outcome.UNCHANGED, avatar_id="500", photo_hash=HASH)),
    ("unchanged, with an old avatar of ours whose delete failed: it goes now",
     facts(jira_user=jira("500", custom=True), state=ours(created=("400", "500"))),
     Plan(Outcome.UNCHANGED, avatar_id="500", photo_hash=HASH, stale=("400",))),
    ("the user picked another picture: ours again (re-used if Jira has it), theirs kept",
     facts(jira_user=jira("777", custom=True), state=ours()),
     Plan(Outcome.RESTORED, reason="user had selected avatar 777", reuse="500",
          reason_if_gone="avatar 500 was deleted in Jira", **WRITE)),
    ("a sweep's bulk read says the user picked another: read afresh before any write",
     facts(jira_user=jira("777", custom=True), state=ours(), hinted=True), Plan(need=Need.FRESH_JIRA_VIEW)),
    ("a sweep's bulk read saying unchanged is trusted: no call at all",
     facts(jira_user=jira("500", custom=True), state=ours(), hinted=True),
     Plan(Outcome.UNCHANGED, avatar_id="500", photo_hash=HASH)),
    ("forced: upload again though nothing changed",
     facts(jira_user=jira("500", custom=True), state=ours(), force=True),
     Plan(Outcome.UPDATED, reason="forced", **WRITE)),
    ("an upload of this photo began and was never recorded: finish it",
     facts(jira_user=jira(), state=ours(photo=OTHER_PHOTO, pending=PHOTO)),
     Plan(Outcome.UPDATED, reason="directory photo changed", finish_interrupted=True, **WRITE)),
    ("forced never finishes an old upload: it uploads anew",
     facts(jira_user=jira(), state=ours(photo=OTHER_PHOTO, pending=PHOTO), force=True),
     Plan(Outcome.UPDATED, reason="directory photo changed", **WRITE)),
    ("a state with no avatar of ours (no photo before): a first upload",
     facts(jira_user=jira(), state=UserState("jdoe", last_outcome="no_photo")), Plan(Outcome.UPDATED, **WRITE)),
    # exclusions: the first thing looked at after `disabled`, whatever else is known
    ("excluded: nothing of theirs is touched, photo or not, ours shown or not",
     facts(excluded="opted out by an admin", jira_user=jira("500", custom=True), state=ours(photo=OTHER_PHOTO)),
     Plan(Outcome.EXCLUDED, reason="opted out by an admin")),
    # photo_removed: what happens once the directory photo is gone
    ("photo removed, photo_removed = keep: as any user without a photo, hands off",
     facts(entry=NO_PHOTO_ENTRY, state=ours(), jira_user=jira("500", custom=True)),
     Plan(Outcome.NO_PHOTO, reason="no thumbnailPhoto/jpegPhoto in corp-ad")),
    ("photo removed, ours shown: the user's own upload (or the default) selected, then ours deleted",
     facts(entry=NO_PHOTO_ENTRY, photo_removed="user_upload", state=ours(created=("400", "500")),
           jira_user=jira("500", custom=True)),
     Plan(Outcome.PHOTO_REMOVED, reset="user_upload", stale=("500", "400"))),
    ("photo removed, ours shown, photo_removed = default",
     facts(entry=NO_PHOTO_ENTRY, photo_removed="default", state=ours(), jira_user=jira("500", custom=True)),
     Plan(Outcome.PHOTO_REMOVED, reset="default", stale=("500",))),
    ("photo removed, the user had picked their own: kept, only ours deleted",
     facts(entry=NO_PHOTO_ENTRY, photo_removed="default", state=ours(), jira_user=jira("777", custom=True)),
     Plan(Outcome.PHOTO_REMOVED, reason="kept: the user's own choice, avatar 777", avatar_id="777", stale=("500",))),
    ("photo removed: Jira's view is read before anything is written",
     facts(entry=NO_PHOTO_ENTRY, photo_removed="default", state=ours()), Plan(need=Need.JIRA_VIEW)),
    ("photo removed: a sweep's bulk read is read afresh first",
     facts(entry=NO_PHOTO_ENTRY, photo_removed="default", state=ours(), jira_user=jira("500", True), hinted=True),
     Plan(need=Need.FRESH_JIRA_VIEW)),
    ("photo removed and dealt with before: the next sync writes nothing, reads nothing in Jira",
     facts(entry=NO_PHOTO_ENTRY, photo_removed="default", state=UserState("jdoe", last_outcome="photo_removed")),
     Plan(Outcome.NO_PHOTO, reason="no thumbnailPhoto/jpegPhoto in corp-ad")),
    ("photo removed, an old avatar of ours left by a failed delete, not shown: it goes now",
     facts(entry=NO_PHOTO_ENTRY, photo_removed="default", state=UserState("jdoe", created_avatar_ids=["400"]),
           jira_user=jira("777", custom=True)),
     Plan(Outcome.NO_PHOTO, reason="no thumbnailPhoto/jpegPhoto in corp-ad", avatar_id="777", stale=("400",))),
]


@pytest.mark.parametrize("situation, known, plan", ROWS, ids=[r[0] for r in ROWS])
def test_the_rules(situation, known, plan):
    assert decide(known) == plan


def test_every_outcome_the_rules_decide_has_a_row():
    """decide() ends in each of these; invalid_photo and failed come from carrying a plan out."""
    decided = {row[2].outcome for row in ROWS if row[2].outcome}
    assert decided == {"disabled", "not_in_directory", "no_photo", "not_in_jira", "updated", "unchanged",
                       "restored", "excluded", "photo_removed"}


def test_nothing_is_read_that_the_rules_do_not_need():
    """decide() asks nothing more of a user with no photo (no Jira call): with photo_removed at
    "keep", Jira is not asked about them at all (the sync reads their stored state up front,
    for an admin's opt-out)."""
    assert decide(facts(entry=NO_PHOTO_ENTRY)).need is None
    assert decide(facts(entry=None, jira_user=UNKNOWN, state=UNKNOWN)).need is None
