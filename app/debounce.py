"""Login storms: Jira fires its login event on every authenticated request, the service's own
REST calls included. So the service account's logins are ignored, and a user whose last sync
settled within ``login_debounce_seconds`` is not synced again (remembered per process, in
front of the store).
"""

from __future__ import annotations

import threading
import time

from cachetools import TTLCache

from .config import Settings
from .outcomes import DEBOUNCED, DISABLED, IGNORED
from .store import Store
from .tables import user_key


class LoginDebounce:
    def __init__(self, settings: Settings, store: Store):
        self.settings, self.store = settings, store
        # when each user last synced successfully, per process
        self._recent: TTLCache[str, float] = TTLCache(maxsize=100_000, ttl=max(1, settings.login_debounce_seconds))
        self._recent_lock = threading.Lock()  # cachetools caches are not thread-safe

    def decision(self, username: str) -> str | None:
        """What a login event needs: DISABLED, IGNORED, DEBOUNCED, or None (sync it).

        Debounced: the user's last sync within the window ended in a settled outcome (any
        but failed): a user without a photo is not looked up again on every request either.
        """
        if self.settings.sync_disabled:
            return DISABLED
        own = self.settings.jira.username
        if own and username.casefold() == own.casefold():
            return IGNORED
        window = self.settings.login_debounce_seconds
        if window <= 0:
            return None
        key = user_key(username)
        with self._recent_lock:
            synced_at = self._recent.get(key)
        if synced_at is None:
            with self.store.fail_fast:
                last = self.store.last_success(username)
            if last is not None:
                synced_at = last.timestamp()
                with self._recent_lock:
                    self._recent[key] = synced_at
        if synced_at is not None and time.time() - synced_at < window:
            return DEBOUNCED
        return None

    def forget(self, username: str) -> None:
        """The user's next login is synced (in this process): an admin let them back in."""
        with self._recent_lock:
            self._recent.pop(user_key(username), None)

    def settled(self, username: str) -> None:
        """A sync of the user just settled: their logins wait for the window from now."""
        with self._recent_lock:
            self._recent[user_key(username)] = time.time()
