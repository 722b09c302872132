"""LDAP / Active Directory access with ldap3: find one user's photo.

Connections are created lazily (never at import or in create_app, so gunicorn can fork),
kept in a small per-process pool, borrowed by one thread at a time, re-opened once when the
server dropped them; app/ldap_connect.py opens them, failing over across a directory's URLs in
order. Every username is
escaped (RFC 4515) before it enters a filter. Photos are read as raw bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.utils.conv import escape_filter_chars

from .config import DirectorySettings
from .ldap_connect import DirectoryUnavailable as DirectoryUnavailable  # where the doors import it from
from .ldap_connect import connect, deadline
from .per_process import PerProcess

log = logging.getLogger(__name__)

# A longer "username" cannot be a Jira user; don't send it to the directory at all.
MAX_USERNAME_LENGTH = 255


# Change markers: uSNChanged (AD, per DC), entryCSN (OpenLDAP, to the microsecond),
# modifyTimestamp (most servers; AD derives it from whenChanged), whenChanged (AD). All present
# are kept. modifyTimestamp alone has a resolution of one second: a photo replaced within the
# second a sync read the entry would keep its marker, and a sweep would never look again.
# A directory with none gets no marker and its users are simply read in full on every sweep.
MARKER_ATTRIBUTES = ("uSNChanged", "entryCSN", "modifyTimestamp", "whenChanged")
SWEEP_PAGE_SIZE = 500  # <= AD's MaxPageSize (1000) and OpenLDAP's usual size.pr


PhotoTag = tuple[str, str, int]  # a photo server's ETag, the hash of the bytes it names, their pixels


@dataclass(frozen=True)
class DirectoryEntry:
    directory: str
    dn: str
    photo: bytes | None  # raw bytes of the photo chosen (the first attribute with a value)
    photo_attribute: str | None  # which attribute (or other source) it came from
    marker: str | None = None  # changes whenever the entry changes (see MARKER_ATTRIBUTES)
    photos: tuple[tuple[str, bytes], ...] = ()  # every photo attribute with a value, in order
    # set where a source knows the photo unchanged without sending it (HTTP 304): photo is None
    photo_sha256: str | None = None
    photo_tag: PhotoTag | None = None  # the photo server's new ETag, to store with the sync's outcome

    @property
    def has_photo(self) -> bool:
        return self.photo is not None or self.photo_sha256 is not None


@dataclass(frozen=True)
class DirectoryUser:
    """One user as a sweep pages through a directory: no photo, just what tells a change."""

    username: str
    dn: str
    marker: str | None


class UserDirectory(Protocol):
    """What the service needs of a directory. Directory (LDAP and AD, below) is the one the
    service runs with; tests/memory_directory.py keeps users in memory behind the same methods."""

    name: str
    photo_attributes: tuple[str, ...]

    @property
    def servers(self) -> list[str]:
        """Where it is, for admins (readiness)."""

    def lookup(self, username: str) -> DirectoryEntry | None:
        """The user's entry; None when not held here; DirectoryUnavailable when it cannot say."""

    def lookup_many(self, usernames: list[str]) -> tuple[dict[str, DirectoryEntry], list[str]]:
        """(entries found, names surely not held here), both keyed as asked; doubts in neither."""

    def iter_users(self) -> Iterator[DirectoryUser]:
        """Every user, without photos; DirectoryUnavailable when paging fails."""

    def check(self) -> None:
        """Raise DirectoryUnavailable with the reason unless the directory answers."""

    def close(self) -> None:
        """Let go of this process's connections."""


def _marker(raw: dict) -> str | None:
    parts = [f"{a}={raw[a.lower()][0].decode('utf-8', 'replace')}" for a in MARKER_ATTRIBUTES if raw.get(a.lower())]
    return ";".join(parts) or None


class Directory:
    def __init__(self, settings: DirectorySettings, photo_attributes: tuple[str, ...]):
        self.settings = settings
        self.name = settings.name
        self.photo_attributes = photo_attributes
        # this process's idle connections, and how many may be open at once
        self._pool: PerProcess[tuple[queue.LifoQueue[ldap3.Connection], threading.BoundedSemaphore]] = PerProcess(
            lambda: (queue.LifoQueue(), threading.BoundedSemaphore(settings.pool_size))
        )

    # -- public ------------------------------------------------------------------------

    @property
    def servers(self) -> list[str]:
        return list(self.settings.urls)

    def lookup(self, username: str) -> DirectoryEntry | None:
        """The entry for ``username``, or None when this directory does not hold it.

        Raises DirectoryUnavailable when the directory cannot answer, so a caller never
        mistakes an outage for "not here" and falls through to a lower directory.
        """
        if not username or len(username) > MAX_USERNAME_LENGTH:
            return None
        s = self.settings
        search_filter = f"(&{s.user_filter}({s.username_attribute}={escape_filter_chars(username)}))"
        attributes = list(self.photo_attributes) + list(MARKER_ATTRIBUTES)
        # size_limit=2: two entries for one username is a misconfiguration, not a pick.
        response, result = self._search(search_filter, attributes, size_limit=2)
        entries = [r for r in response if r.get("type") == "searchResEntry"]
        code = result.get("result")
        if code == 4 or len(entries) > 1:  # sizeLimitExceeded
            raise DirectoryUnavailable(
                self.name,
                f"more than one entry matches {s.username_attribute}="
                f"{username!r}; fix user_filter or username_attribute",
            )
        if code not in (0, 32):  # success, noSuchObject (base DN missing: nobody here)
            raise DirectoryUnavailable(
                self.name, f"search failed: {result.get('description')} {result.get('message') or ''}".strip()
            )
        if not entries:
            return None
        entry = entries[0]
        return self._entry(entry["dn"], entry["raw_attributes"])

    def _entry(self, dn: str, raw: dict) -> DirectoryEntry:
        """``raw``: an entry's raw_attributes, attribute (lower case; app/ldap_connect.py's
        decoding) -> raw values."""
        photos = tuple(
            (attribute, bytes(values[0]))
            for attribute in self.photo_attributes
            if (values := raw.get(attribute.lower())) and values[0]
        )
        first = photos[0] if photos else (None, None)
        return DirectoryEntry(self.name, dn, first[1], first[0], _marker(raw), photos)

    def lookup_many(self, usernames: list[str]) -> tuple[dict[str, DirectoryEntry], list[str]]:
        """Several users in one search (a worker's batch of jobs): (entries found, names
        surely not held here), both as asked. Only clean answers are given: a user held twice,
        or any doubt (an entry no asked name accounts for: a matching rule this cannot mirror;
        any error), leaves users in neither, and the caller looks those up alone, with
        lookup()'s rules and errors.
        """
        s = self.settings
        wanted = {name.casefold(): name for name in usernames if name and len(name) <= MAX_USERNAME_LENGTH}
        if not wanted:
            return {}, []
        terms = "".join(f"({s.username_attribute}={escape_filter_chars(n)})" for n in wanted.values())
        search_filter = f"(&{s.user_filter}(|{terms}))"
        attributes = [s.username_attribute, *self.photo_attributes, *MARKER_ATTRIBUTES]
        found: dict[str, list] = {}
        complete = True
        try:
            # paged: a service account's size limit may be below the batch
            for entry in self._paged(search_filter, attributes, page_size=len(wanted)):
                raw = entry["raw_attributes"]
                names = {v.decode("utf-8", "replace").casefold() for v in raw.get(s.username_attribute.lower(), [])}
                mine = names & wanted.keys()
                if not mine:
                    complete = False
                for key in mine:
                    found.setdefault(key, []).append(self._entry(entry["dn"], raw))
        except (DirectoryUnavailable, LDAPException):
            return {}, []
        entries = {wanted[k]: e[0] for k, e in found.items() if len(e) == 1}
        return entries, [n for k, n in wanted.items() if k not in found] if complete else []

    def iter_users(self) -> Iterator[DirectoryUser]:
        """Every user under base_dn, page by page, without transferring any photo.

        A connection of its own: OpenLDAP keeps one paged-search state per connection, and
        a lookup interleaved on the same connection would reset it. Errors raise (ldap3's
        paged generator would silently stop on e.g. adminLimitExceeded).
        """
        s = self.settings
        username_attr = s.username_attribute.lower()
        attributes = [s.username_attribute, *MARKER_ATTRIBUTES]
        conn = connect(self.settings)
        try:
            for entry in self._pages(conn, s.user_filter, attributes, SWEEP_PAGE_SIZE):
                raw = entry["raw_attributes"]
                names = raw.get(username_attr)
                if not names:
                    continue
                yield DirectoryUser(names[0].decode("utf-8", "replace"), entry["dn"], _marker(raw))
        except DirectoryUnavailable as exc:
            raise DirectoryUnavailable(self.name, f"paging through users failed: {exc.reason}") from None
        finally:
            self._discard(conn)

    def check(self) -> None:
        """Bind once (a fresh connection); raise DirectoryUnavailable with the reason."""
        conn = connect(self.settings)
        try:
            conn.unbind()
        except LDAPException:
            pass

    def close(self) -> None:
        pool = self._pool.peek()
        while pool is not None:
            try:
                conn = pool[0].get_nowait()
            except queue.Empty:
                return
            self._discard(conn)

    # -- connections -------------------------------------------------------------------

    def _search(self, search_filter: str, attributes: list[str], size_limit: int = 0):
        s = self.settings
        for attempt in (1, 2):
            with self._connection(fresh=attempt == 2) as conn:
                try:
                    with deadline(conn, self.settings):
                        conn.search(
                            s.base_dn,
                            search_filter,
                            search_scope=ldap3.SUBTREE,
                            attributes=attributes,
                            size_limit=size_limit,
                            time_limit=s.timeout,
                        )
                    response, result = conn.response or [], conn.result or {}
                    conn.response = None  # an idle connection need not keep the last photo
                    return response, result
                except LDAPCommunicationError as exc:
                    # The server dropped an idle connection (AD: MaxConnIdleTime) or restarted.
                    conn.broken = True
                    self.close()  # the idle siblings went down with the same server
                    if attempt == 2:
                        raise DirectoryUnavailable(self.name, f"connection lost: {exc}") from None
                    log.info("directory %s: connection lost (%s), reconnecting", self.name, exc)
                except LDAPException as exc:
                    conn.broken = True
                    raise DirectoryUnavailable(self.name, f"search failed: {exc}") from None
        raise AssertionError("unreachable")

    def _paged(self, search_filter: str, attributes: list[str], page_size: int) -> Iterator[dict]:
        """The entries of a paged search on a pooled connection; any error raises."""
        with self._connection() as conn:
            try:
                yield from self._pages(conn, search_filter, attributes, page_size)
            except DirectoryUnavailable:
                conn.broken = True
                raise

    def _pages(
        self, conn: ldap3.Connection, search_filter: str, attributes: list[str], page_size: int
    ) -> Iterator[dict]:
        """The entries of a paged search on ``conn``, each page within the call deadline."""
        s = self.settings
        cookie = None
        while True:
            try:
                with deadline(conn, self.settings):
                    conn.search(
                        s.base_dn,
                        search_filter,
                        search_scope=ldap3.SUBTREE,
                        attributes=attributes,
                        time_limit=s.timeout,
                        paged_size=page_size,
                        paged_cookie=cookie,
                    )
            except LDAPException as exc:
                raise DirectoryUnavailable(self.name, f"search failed: {exc}") from None
            result, response = conn.result or {}, conn.response or []
            conn.response = None
            if result.get("result") not in (0, 32):
                raise DirectoryUnavailable(self.name, f"search failed: {result.get('description')}")
            yield from (r for r in response if r.get("type") == "searchResEntry")
            cookie = (result.get("controls") or {}).get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
            if not cookie:
                return

    @contextmanager
    def _connection(self, fresh: bool = False) -> Iterator[ldap3.Connection]:
        idle, slots = self._pool.get()  # a forked child's own: the parent's sockets are never used
        if not slots.acquire(timeout=self.settings.timeout * 2):
            raise DirectoryUnavailable(self.name, "all connections busy")
        conn = None
        try:
            if not fresh:
                try:
                    conn = idle.get_nowait()
                except queue.Empty:
                    conn = None
            if conn is None or conn.closed:
                conn = connect(self.settings)
            conn.broken = False
            yield conn
        finally:
            if conn is not None:
                if conn.broken or conn.closed:
                    self._discard(conn)
                else:
                    idle.put(conn)
            slots.release()

    def _discard(self, conn: ldap3.Connection) -> None:
        try:
            conn.unbind()
        except Exception:  # noqa: BLE001 - the socket may be gone already
            pass


def build_directories(settings) -> list[UserDirectory]:
    return [Directory(d, settings.attributes_for(d)) for d in settings.directories]
