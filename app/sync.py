"""Syncing one user: app/rules.py decides, this module reads what the decision needs, carries
it out against Jira and records the outcome.

A real sync is always a user's job (app/job_run.py: a queue worker's, an admin's sync now): it
runs Syncer.attempt, then Syncer.record in the transaction that ends the job, then
Syncer.finish. Syncer.dry_run is the same attempt with its writes left out (the admin API's,
the CLI's, a dry-run sweep's). None of the doors holds a rule.

Outcomes: updated, restored, unchanged, no_photo, photo_removed, not_in_directory,
not_in_jira, invalid_photo, disabled, excluded, failed (with a reason).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from sqlalchemy.engine import Connection

from . import metrics, states
from .config import Settings
from .database import describe_error
from .debounce import LoginDebounce
from .directory import DirectoryEntry, DirectoryUnavailable, UserDirectory
from .exclusions import Exclusions
from .images import InvalidPhoto, normalize, png_size
from .jira import JiraClient, JiraError, JiraUser
from .outcomes import (
    DISABLED,
    FAILED,
    INVALID_PHOTO,
    PHOTO_REMOVED,
    RESTORED,
    SETTLED,
    UNCHANGED,
    UPDATED,
)
from .photo_sources import PhotoSources
from .rules import UNKNOWN, Facts, Need, Plan, Unknown, decide, stale_after
from .states import UserState
from .store import UNAVAILABLE as DATABASE_UNAVAILABLE
from .store import Store
from .sync_result import NoPreview, SyncResult, Verdict
from .usernames import loggable

log = logging.getLogger(__name__)

DECODE_SLOTS = 2  # photos decoded at once per process, whatever the number of threads


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


class Syncer:
    def __init__(self, settings: Settings, directories: list[UserDirectory], jira: JiraClient, store: Store):
        self.settings, self.jira, self.store = settings, jira, store
        self.exclusions = Exclusions(settings, jira)
        self.photos = PhotoSources(settings, directories, store)
        self.debounce = LoginDebounce(settings, store)  # login storms
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)

    def dry_run(
        self, username: str, force: bool = False, jira_user: JiraUser | None = None, source: str = "admin"
    ) -> SyncResult:
        """What a sync of the user would do, found by reading only: nothing is uploaded or
        recorded. Never raises. (A real sync is a job's: app/job_run.py.)"""
        verdict = self.attempt(username, force=force, dry_run=True, jira_user=jira_user, source=source)
        return self.finish(verdict, recorded=False)

    def attempt(
        self,
        username: str,
        force: bool = False,
        dry_run: bool = False,
        jira_user: JiraUser | None = None,
        attempt: int = 1,
        entry: DirectoryEntry | None = None,
        source: str = "admin",
        state: UserState | None | Unknown = UNKNOWN,
    ) -> Verdict:
        """Decide and carry out what the user's Jira picture needs; what to record is left to
        record(). Never raises: a failure is the verdict's outcome.

        ``jira_user``: the user as a sweep just read it in bulk, saving one GET per user.
        ``entry``: the user's directory entry as prefetch() just read it (directory order holds there).
        ``state``: what the store held of the user when the worker's batch was read (None: nothing);
        UNKNOWN: read it here.
        ``source``: what asked for it (login, created, updated, sweep, admin), for the log
        line and the dashboard.
        ``attempt``: the job's attempt number. A later attempt (like any sync after a failed
        one) is itself the sign that an upload may have been cut short, so nothing is written to
        mark an upload as begun: the only write before the outcome's is the new avatar's id
        (Store.remember_created), between crop-confirm and select.
        """
        started = time.perf_counter()
        try:
            verdict = self._sync(username, force, dry_run, jira_user, attempt, entry, state)
        except DirectoryUnavailable as exc:
            # Directory order: an unreachable directory ahead of the user's own must not be skipped.
            verdict = Verdict(SyncResult(username, FAILED, str(exc), dry_run=dry_run, retryable=True))
        except JiraError as exc:
            verdict = Verdict(SyncResult(username, FAILED, f"Jira: {exc}", dry_run=dry_run, retryable=exc.retryable))
        except DATABASE_UNAVAILABLE as exc:  # the state database: nothing recorded
            verdict = Verdict(
                SyncResult(username, FAILED, f"database: {describe_error(exc)}", dry_run=dry_run, retryable=True)
            )
        except Exception as exc:
            log.exception("unexpected error syncing %s", loggable(username))
            verdict = Verdict(
                SyncResult(
                    username, FAILED, f"internal error: {type(exc).__name__}: {exc}", dry_run=dry_run, retryable=True
                )
            )
        verdict.result = replace(verdict.result, source=source, duration_ms=_ms_since(started))
        return verdict

    @staticmethod
    def needs_record(verdict: Verdict) -> bool:
        """A dry run writes nothing; a disabled sync has nothing of the user's to write."""
        return not verdict.result.dry_run and verdict.result.outcome != DISABLED

    def record(self, verdicts: list[Verdict], tx: Connection) -> None:
        """The users' outcomes, in the caller's transaction (the worker's also ends the jobs)."""
        states.update_many(tx, [(v.result.username, self._change(v)) for v in verdicts if self.needs_record(v)])
        if self.photos.http is not None:
            tags = [(v.result.username, *v.photo_tag) for v in verdicts if v.photo_tag and self.needs_record(v)]
            self.photos.http.remember(tx, tags)

    @staticmethod
    def _change(verdict: Verdict) -> states.Change:
        """What recording the verdict changes in the user's stored state."""
        r = verdict.result

        def change(state: UserState) -> None:
            state.last_outcome = r.outcome
            state.last_error = None if r.outcome in (UPDATED, RESTORED, UNCHANGED) else r.reason
            if r.directory:
                state.directory = r.directory
            if r.outcome in SETTLED:  # a failure proves nothing about the entry: its marker waits
                state.last_success_at = state.last_attempt_at
                state.marker = verdict.marker
            if r.outcome == PHOTO_REMOVED:  # nothing of ours is shown; ours are deleted next
                state.photo_sha256 = state.avatar_id = state.pending_avatar_id = state.pending_sha256 = None
            if r.outcome in (UPDATED, RESTORED):
                # Only now, after Jira confirmed, is the hash stored (unchanged -> no upload).
                state.photo_sha256, state.avatar_id = verdict.photo_hash, r.avatar_id
                state.pending_avatar_id = state.pending_sha256 = None
                if r.avatar_id is not None and r.avatar_id not in state.created_avatar_ids:
                    state.created_avatar_ids.append(r.avatar_id)
            state.last_source, state.last_duration_ms = r.source, r.duration_ms

        return change

    @staticmethod
    def unrecorded(verdict: Verdict, exc: Exception) -> Verdict:
        """The outcome could not be written: whatever Jira now shows, the sync counts as failed
        (the next one finds an upload it made through the pending mark, or its file name)."""
        if isinstance(exc, DATABASE_UNAVAILABLE):
            log.error("could not record the outcome of %s: %s", loggable(verdict.result.username), describe_error(exc))
        else:
            log.error("could not record the outcome of %s", loggable(verdict.result.username), exc_info=exc)
        if verdict.result.outcome == FAILED:
            return verdict
        return Verdict(
            replace(verdict.result, outcome=FAILED, retryable=True, reason=f"database: {describe_error(exc)}")
        )

    def finish(self, verdict: Verdict, recorded: bool) -> SyncResult:
        """After the outcome is recorded (or not): delete our stale avatars, remember the
        settled sync for the login debounce, count it, and log its one line."""
        result = verdict.result
        if recorded and verdict.stale:
            try:
                self._delete_previous(result.username, verdict.stale)
            except Exception:
                log.exception("could not delete old avatars of %s", loggable(result.username))
        if not result.dry_run and result.outcome in SETTLED:
            self.debounce.settled(result.username)
        if not result.dry_run:
            metrics.SYNCS.labels(result.outcome, result.source).inc()
            metrics.SYNC_SECONDS.observe((result.duration_ms or 0) / 1000)
        log.log(
            logging.WARNING if result.outcome == FAILED else logging.INFO,
            "sync %s%s source=%s duration=%dms",
            result.line(),
            " [dry run]" if result.dry_run else "",
            result.source,
            result.duration_ms,
            extra={
                "user": result.username,
                "outcome": result.outcome,
                "reason": result.reason,
                "source": result.source,
                "duration_ms": result.duration_ms,
                "dry_run": result.dry_run,
            },
        )
        return result

    # -- carrying out the rules (app/rules.py decides) ---------------------------------

    def _sync(
        self,
        username: str,
        force: bool,
        dry_run: bool,
        jira_user: JiraUser | None,
        attempt: int,
        prefetched: DirectoryEntry | None,
        stored: UserState | None | Unknown,
    ) -> Verdict:
        """Reads what the rules ask for, then makes Jira's changes; what to store is left to
        the caller (record)."""
        disabled = self.settings.sync_disabled
        # what is stored first: it says whether an admin excluded the user, before anything is read
        state = None if disabled else (self.store.get(username) if stored is UNKNOWN else stored)
        excluded = None if disabled else self.exclusions.reason(username, state)
        # directory order; an excluded user's entry is not read, so no change marker is stored for
        # them and every sweep asks again (exclude_users or exclude_groups may have changed)
        entry = None if disabled or excluded else self.photos.find(username, prefetched)
        facts = Facts.of(
            entry,
            jira_user=jira_user if jira_user is not None else UNKNOWN,
            state=state,
            hinted=jira_user is not None,
            force=force,
            retried=attempt > 1 or (state is not None and state.last_outcome == FAILED),
            disabled=disabled,
            excluded=excluded,
            photo_removed=self.settings.photo_removed,
            attributes=self.photos.attributes(entry) if entry else (),
        )
        plan = decide(facts)
        while plan.need is not None:  # Jira's view, first or fresh (the state is read above)
            assert plan.need is not Need.STATE
            facts = replace(facts, jira_user=self.jira.get_user(username), hinted=False)
            plan = decide(facts)
        if plan.upload:
            plan = self._carry_out(username, facts, plan, dry_run)
        elif plan.reset:
            plan = self._reset(username, plan, dry_run)
        assert plan.outcome is not None  # a plan that needs nothing more has its outcome
        return Verdict(
            SyncResult(
                username, plan.outcome, plan.reason, plan.avatar_id, entry.directory if entry else None, dry_run
            ),
            entry.marker if entry else None,
            plan.photo_hash,
            list(plan.stale),
            entry.photo_tag if entry else None,
        )

    def _carry_out(self, username: str, facts: Facts, plan: Plan, dry_run: bool) -> Plan:
        """A plan that writes: select ours again if Jira still has it, else finish an upload
        a killed run left, else decode, upload and select. Returns what was done."""
        state = facts.state if isinstance(facts.state, UserState) else None
        entry, jira_user, photo_hash = facts.entry, facts.jira_user, plan.photo_hash
        # decide() plans a write only for a user with a photo, in Jira, its photo hashed
        assert entry is not None and entry.has_photo and isinstance(jira_user, JiraUser) and photo_hash
        custom = self.jira.custom_avatars(username) if plan.reuse or plan.finish_interrupted else {}
        done = replace(plan, upload=False)
        if plan.reuse:
            if plan.reuse in custom:
                if not dry_run:
                    self.jira.select_avatar(username, plan.reuse)
                return replace(done, avatar_id=plan.reuse, stale=stale_after(state, plan.reuse))
            done = replace(done, reason=plan.reason_if_gone)
        leftover = self._interrupted_upload(state, photo_hash, custom) if plan.finish_interrupted else None
        if leftover:
            if not dry_run:
                # a bulk read's view cannot justify a write: read it afresh before selecting
                shown = (self.jira.get_user(username) if facts.hinted else None) or jira_user
                if shown.avatar_id != leftover:
                    self.jira.select_avatar(username, leftover)
            return replace(done, avatar_id=leftover, stale=stale_after(state, leftover))
        entry = self.photos.download(username, entry)  # where a source said only "not modified"
        try:
            png = self._normalize(entry.photo or b"")
        except InvalidPhoto as exc:
            return Plan(INVALID_PHOTO, reason=f"{entry.photo_attribute} in {entry.directory}: {exc}")
        if dry_run:
            return done
        new_id = self._upload_and_select(username, png, photo_hash)
        return replace(done, avatar_id=new_id, stale=stale_after(state, new_id))

    def _reset(self, username: str, plan: Plan, dry_run: bool) -> Plan:
        """The directory photo is gone and ours is shown: select the user's own latest upload
        (photo_removed = "user_upload", when there is one) or Jira's default, explicitly. Ours
        are deleted after the outcome is recorded (finish)."""
        if plan.reset == "user_upload":
            theirs = [
                avatar_id
                for avatar_id, file_name in self.jira.custom_avatars(username).items()
                if avatar_id not in plan.stale and not (file_name or "").startswith(UPLOAD_PREFIX)
            ]
            if theirs:
                latest = max(theirs, key=lambda a: (len(a), a))  # ids grow: the highest is the latest
                if not dry_run:
                    self.jira.select_avatar(username, latest)
                return replace(plan, avatar_id=latest, reason=f"user_upload: the user's own avatar {latest} selected")
            reason = "user_upload: no upload of the user's own, Jira's default avatar selected"
        else:
            reason = "default: Jira's default avatar selected"
        if not dry_run:
            self.jira.select_default_avatar(username)
        return replace(plan, avatar_id=None, reason=reason)

    def preview(self, username: str) -> bytes:
        """The PNG the next sync would upload for the user: the photo found as a sync finds
        it, made square with the same settings. Reads the directories only; writes nothing.
        Raises NoPreview (with an HTTP status and the reason) or DirectoryUnavailable."""
        entry = self.photos.find(username, fresh=True)
        if entry is None:
            raise NoPreview(404, "not in any directory")
        if entry.photo is None:
            raise NoPreview(404, f"no {'/'.join(self.photos.attributes(entry))} in {entry.directory}")
        try:
            return self._normalize(entry.photo)
        except InvalidPhoto as exc:
            raise NoPreview(422, f"{entry.photo_attribute} in {entry.directory}: {exc}") from None

    # -- steps -------------------------------------------------------------------------

    def _normalize(self, photo: bytes) -> bytes:
        s = self.settings
        with self._decode_slots:  # memory: config.DEFAULT_MAX_PHOTO_PIXELS says why
            return normalize(photo, s.size, crop=s.crop, max_bytes=s.max_photo_bytes, max_pixels=s.max_photo_pixels)

    @staticmethod
    def _interrupted_upload(state: UserState | None, photo_hash: str, custom: dict[str, str | None]) -> str | None:
        """The avatar a killed earlier run created for this very photo, if Jira still has it
        (``custom``: the user's avatars in Jira, id -> file name)."""
        if state is not None and state.pending_sha256 == photo_hash and state.pending_avatar_id in custom:
            return state.pending_avatar_id
        # Killed between Jira's crop-confirm answer and our note of the id: find it by the
        # file name we gave it (DC 10+ lists fileName; elsewhere we simply upload again).
        name, ours = upload_filename(photo_hash), state.created_avatar_ids if state else []
        return next((i for i, f in custom.items() if f == name and i not in ours), None)

    def _upload_and_select(self, username: str, png: bytes, photo_hash: str) -> str:
        side, _ = png_size(png)
        new_id = self.jira.upload_avatar(username, png, side, upload_filename(photo_hash))
        # Remember it before selecting: a crash in between must not orphan it in Jira.
        self.store.remember_created(username, new_id, photo_hash)
        self.jira.select_avatar(username, new_id)
        return new_id

    def _delete_previous(self, username: str, stale: list[str]) -> None:
        """Delete avatars this service created before; never one the user uploaded (overwrite on change)."""
        deleted = []
        for avatar_id in stale:
            try:
                self.jira.delete_avatar(username, avatar_id)
                deleted.append(avatar_id)
            except JiraError as exc:
                # Kept on the list: the next successful sync tries again.
                log.warning("could not delete old avatar %s of %s: %s", avatar_id, username, exc)
        if deleted:
            self.store.forget_created(username, deleted)


UPLOAD_PREFIX = "avatar-sync-"


def upload_filename(photo_hash: str) -> str:
    """Names our uploads after the photo, so an interrupted upload can be recognised."""
    return f"{UPLOAD_PREFIX}{photo_hash[:16]}.png"
