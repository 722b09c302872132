"""A directory kept in memory, behind the same methods as the LDAP one (app.directory's
UserDirectory): for tests of the doors, the queue and the rules that need no slapd. Usernames
match case-insensitively, as LDAP's do."""
from __future__ import annotations

from collections.abc import Iterator

from app.directory import DirectoryEntry, DirectoryUnavailable, DirectoryUser


class MemoryDirectory:
    def __init__(self, name: str = "memory", photo_attributes: tuple[str, ...] = ("jpegPhoto",)):
        self.name, self.photo_attributes = name, photo_attributes
        self.users: dict[str, DirectoryEntry] = {}
        self.down: str | None = None  # set to a reason: every call raises DirectoryUnavailable
        self._changes = 0

    @property
    def servers(self) -> list[str]:
        return [f"memory:{self.name}"]

    def add(self, username: str, photo: bytes | None = None) -> None:
        """Add the user, or replace the photo (the change marker moves, as an LDAP modify's)."""
        self._changes += 1
        attribute = self.photo_attributes[0]
        self.users[username.casefold()] = DirectoryEntry(
            self.name, f"uid={username},ou=memory", photo, attribute if photo else None,
            f"change={self._changes}", ((attribute, photo),) if photo else ())

    def remove(self, username: str) -> None:
        self.users.pop(username.casefold(), None)

    def _answering(self) -> None:
        if self.down:
            raise DirectoryUnavailable(self.name, self.down)

    def lookup(self, username: str) -> DirectoryEntry | None:
        self._answering()
        return self.users.get(username.casefold())

    def lookup_many(self, usernames: list[str]) -> tuple[dict[str, DirectoryEntry], list[str]]:
        if self.down:
            return {}, []
        found = {n: self.users[n.casefold()] for n in usernames if n.casefold() in self.users}
        return found, [n for n in usernames if n not in found]

    def iter_users(self) -> Iterator[DirectoryUser]:
        self._answering()
        for entry in list(self.users.values()):
            yield DirectoryUser(entry.dn.split(",")[0].removeprefix("uid="), entry.dn, entry.marker)

    def check(self) -> None:
        self._answering()

    def close(self) -> None:
        pass
