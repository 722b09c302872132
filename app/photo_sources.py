"""Where a user's photo comes from: the directories in order (the first holding the user wins
and gives the entry: the name, the change marker, the photo attributes' values), and the HTTP
photo server ([http_photos]) before or after those attributes in the chain. ``prefer`` picks
the first photo of the chain, or the largest (by pixels, read from the image headers; a tie
goes to the earlier). The rules (app/rules.py) see only the photo chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import Settings
from .directory import DirectoryEntry, PhotoTag, UserDirectory
from .http_photos import SOURCE, HttpPhotos, pixels_of
from .store import Store


@dataclass(frozen=True)
class _Candidate:
    source: str  # an attribute, or http_photos
    photo: bytes | None  # None: the server said "not modified" (its hash below)
    photo_sha256: str | None = None
    pixels: int | None = None  # known for HTTP photos; read from the header when needed


class PhotoSources:
    def __init__(self, settings: Settings, directories: list[UserDirectory], store: Store):
        self.settings, self.directories = settings, directories  # the services' one list
        h = settings.http_photos
        self.http = HttpPhotos(h, store, settings.max_photo_bytes) if h else None
        self.http_first = bool(h and h.position == "first")

    def find(self, username: str, entry: DirectoryEntry | None = None, fresh: bool = False) -> DirectoryEntry | None:
        """The user's entry (``entry``: as prefetch() read it) with the photo the chain chooses;
        None when no directory holds the user. ``fresh``: the HTTP photo is fetched whole, its
        ETag neither used nor stored (a preview; an upload that needs the bytes)."""
        entry = entry or self._directory_entry(username)
        if entry is None or (self.http is None and self.settings.prefer == "first"):
            return entry  # the directory's own choice: its first attribute with a value
        chosen, tag = self._choose(username, entry, fresh)
        if chosen is None:
            return replace(entry, photo=None, photo_attribute=None, photo_sha256=None, photo_tag=tag)
        sha = chosen.photo_sha256 if chosen.photo is None else None
        return replace(entry, photo=chosen.photo, photo_attribute=chosen.source, photo_sha256=sha, photo_tag=tag)

    def download(self, username: str, entry: DirectoryEntry) -> DirectoryEntry:
        """The entry with the photo's bytes, where the chain had only its hash (a 304)."""
        if entry.photo is not None:
            return entry
        again = self.find(username, replace(entry, photo_sha256=None), fresh=True)
        return again if again is not None else entry

    def attributes(self, entry: DirectoryEntry) -> tuple[str, ...]:
        """The chain for the user's directory, for a reason such as "no thumbnailPhoto/jpegPhoto"."""
        own = next((d.photo_attributes for d in self.directories if d.name == entry.directory), None)
        chain = own if own is not None else self.settings.photo_attributes
        if self.http is None:
            return chain
        return (SOURCE, *chain) if self.http_first else (*chain, SOURCE)

    def prefetch(self, usernames: list[str]) -> dict[str, DirectoryEntry]:
        """The entries _directory_entry would give a batch of users, in one search per
        directory (a sweep's jobs, claimed a few at a time). A user left out is looked up alone."""
        entries, rest = {}, list(usernames)
        for directory in self.directories:
            if not rest:
                break
            found, absent = directory.lookup_many(rest)
            entries.update(found)
            rest = absent  # only a user surely not held here may be sought further down
        return entries

    def _directory_entry(self, username: str) -> DirectoryEntry | None:
        """First directory holding the user wins; an outage before it raises (directory order)."""
        for directory in self.directories:
            entry = directory.lookup(username)
            if entry is not None:
                return entry
        return None

    def _choose(self, username: str, entry: DirectoryEntry, fresh: bool) -> tuple[_Candidate | None, PhotoTag | None]:
        """The candidate the chain chooses (None: no photo anywhere), and the photo server's new
        tag if it sent one."""
        ldap = [_Candidate(attribute, photo) for attribute, photo in entry.photos]
        if self.settings.prefer == "first" and ldap and not self.http_first:
            return ldap[0], None  # the server is not asked: a photo comes before it
        got = self.http.fetch(username, conditional=not fresh, remember=not fresh) if self.http else None
        web = [_Candidate(SOURCE, got.photo, got.photo_sha256, got.pixels)] if got else []
        tag = (got.new_tag, got.photo_sha256, got.pixels) if got and got.new_tag else None
        chain = web + ldap if self.http_first else ldap + web
        if not chain:
            return None, tag
        if self.settings.prefer == "first":
            return chain[0], tag
        sizes = [c.pixels if c.pixels is not None else pixels_of(c.photo or b"") for c in chain]
        return chain[max(range(len(chain)), key=lambda i: (sizes[i], -i))], tag
