"""Who keeps their own picture: ``exclude_users`` (names), the members of ``exclude_groups``
(Jira groups, read through Jira's API and cached for a few minutes per process), and each
user an admin opted out (``excluded`` in the user's stored state). The rule that an excluded
user is not touched is app/rules.py's; this module only says who is.
"""

from __future__ import annotations

import logging
import threading
import time

from . import jira_users
from .config import Settings
from .jira import JiraClient, JiraError
from .states import UserState
from .tables import user_key

log = logging.getLogger(__name__)

GROUPS_CACHE_SECONDS = 300  # a user added to an excluded group is excluded within this
RETRY_SECONDS = 10  # a failed read of the groups is not tried again before this


class Exclusions:
    def __init__(self, settings: Settings, jira: JiraClient):
        self.settings, self.jira = settings, jira
        self._lock = threading.Lock()  # held by the one caller reading the groups
        self._members: dict[str, str] = {}  # user_key -> the excluded group it is in
        self._read_at = float("-inf")
        self._failure: JiraError | None = None  # the last read's, while RETRY_SECONDS run
        self._failed_at = float("-inf")

    def reason(self, username: str, state: UserState | None) -> str | None:
        """Why the user is excluded, or None. Raises JiraError when the groups cannot be read:
        a user who may be excluded is not synced on a guess."""
        key = user_key(username)
        if key in self.settings.exclude_users:
            return "listed in exclude_users"
        if state is not None and state.excluded:
            return "opted out by an admin"
        group = self.group_of(key) if self.settings.exclude_groups else None
        return f"member of the Jira group {group} (exclude_groups)" if group else None

    def describe(self, username: str, state: UserState | None) -> dict:
        """For the admin API and the CLI: the admin's opt-out, and whether the user is excluded
        by any of the three, and why (a group Jira cannot tell about now is said so)."""
        try:
            reason = self.reason(username, state)
        except JiraError as exc:
            reason = f"unknown: exclude_groups cannot be read now ({exc})"
        return {"excluded": bool(state and state.excluded), "excluded_by_any": bool(reason), "reason": reason}

    def group_of(self, key: str) -> str | None:
        """The excluded group holding the user, from a copy at most GROUPS_CACHE_SECONDS old;
        older, one caller reads the groups again while the others keep to the copy (up to twice
        that age: a sync does not wait for the pages of a big group). A failed read is not
        tried again for RETRY_SECONDS: until then the copy stands if it is usable, else the
        failure is raised at once (not one Jira timeout after another, each caller in turn)."""
        return self._current().get(key)

    def _current(self) -> dict[str, str]:
        now = time.monotonic()
        if now - self._read_at <= GROUPS_CACHE_SECONDS:
            return self._members
        usable = now - self._read_at <= 2 * GROUPS_CACHE_SECONDS
        if not self._lock.acquire(blocking=not usable):
            return self._members  # another caller is reading them
        try:
            if time.monotonic() - self._read_at <= GROUPS_CACHE_SECONDS:  # read while this one waited
                return self._members
            if self._failure is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
                if usable:
                    return self._members
                raise self._failure.with_traceback(None)
            try:
                members, missing = self.read_groups()
            except JiraError as exc:
                self._failure, self._failed_at = exc, time.monotonic()
                if not usable:
                    raise
                log.warning(
                    "exclude_groups: cannot read them now, keeping the copy read %.0f s ago: %s",
                    time.monotonic() - self._read_at,
                    exc,
                )
                return self._members
            for group in missing:
                log.warning("exclude_groups: Jira has no group %r (or will not list it to the service)", group)
            self._members, self._read_at, self._failure = members, time.monotonic(), None
            return members
        finally:
            self._lock.release()

    def read_groups(self) -> tuple[dict[str, str], list[str]]:
        """Every member of exclude_groups (inactive ones too), each with the first group that
        holds it; and the groups Jira does not have. Read now, not from the cache (`check`)."""
        members: dict[str, str] = {}
        missing: list[str] = []
        for group in self.settings.exclude_groups:  # one at a time: each member named by its group
            users, unknown = jira_users.group_members(self.jira, [group], inactive=True)
            missing += unknown
            for key in users:
                members.setdefault(key, group)
        return members, missing
