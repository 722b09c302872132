"""Photos from an HTTP server ([http_photos]): ``GET url`` with the user's name in it. A 404 is
"no photo here"; 200 is the photo. Each photo's ETag is kept in the database with the hash of
the bytes it named (written with the sync's outcome, remember()), so an unchanged photo costs
one ``304 Not Modified`` and no transfer, after a restart too. Any other answer, or none, makes
the sync fail and be retried (as an unreachable directory does): a guess could replace a photo
with an older one.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import urllib3
from PIL import Image
from sqlalchemy import Column, Integer, String, Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .config import HttpPhotoSettings
from .directory import DirectoryUnavailable
from .jira_http import JiraHttp
from .store import Store
from .tables import metadata, user_key

SOURCE = "http_photos"  # its name in the chain, in reasons and in the dashboard
CHECKS_AT_ONCE = 8  # a sweep's conditional HEADs in flight (unchanged())

http_photos = Table(
    "http_photos",
    metadata,
    Column("username", String(255), primary_key=True),  # user_key
    Column("etag", String(255), nullable=False),
    Column("photo_sha256", String(64), nullable=False),  # of the bytes the tag named
    Column("pixels", Integer, nullable=False),  # width x height, for prefer = "largest"
)


@dataclass(frozen=True)
class HttpPhoto:
    photo: bytes | None  # None: not modified since the tag (the bytes were not sent again)
    photo_sha256: str
    pixels: int
    new_tag: str | None = None  # an ETag to store for these bytes, with the sync's outcome (remember)


def pixels_of(photo: bytes) -> int:
    """Width x height from the image's header (nothing decoded); 0 when it is not an image."""
    try:
        with Image.open(io.BytesIO(photo)) as im:
            return im.size[0] * im.size[1]
    except Exception:  # noqa: BLE001 - any unreadable header: normalize() says why later
        return 0


class HttpPhotos:
    def __init__(self, settings: HttpPhotoSettings, store: Store, max_bytes: int):
        self.settings, self.store = settings, store
        self.http = JiraHttp(settings, max_body=max_bytes, name="the photo server")
        self._check_method = "HEAD"  # see _not_modified

    def url_for(self, username: str) -> str:
        return self.settings.url.replace("{username}", quote(username, safe=""))

    def fetch(self, username: str, conditional: bool = True, remember: bool = True) -> HttpPhoto | None:
        """The user's photo, or None (404). ``conditional``: ask with the stored ETag (a 304
        gives the stored hash and no bytes); ``remember``: a new tag comes back in ``new_tag``,
        for the sync to store with its outcome (remember(); a preview keeps none)."""
        key = user_key(username)
        known = self._known(key) if conditional else None
        headers = {"Accept": "image/*"}
        if known is not None:
            headers["If-None-Match"] = known.etag
        url = self.url_for(username)
        try:
            resp = self.http.request("GET", url, headers=headers)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DirectoryUnavailable(SOURCE, f"GET {url}: {exc}") from None
        if resp.status == 304 and known is not None:
            return HttpPhoto(None, known.photo_sha256, known.pixels)
        if resp.status == 404:
            return None
        if resp.status != 200 or not resp.body:
            raise DirectoryUnavailable(SOURCE, f"GET {url} answered {resp.status} {resp.reason}".strip())
        etag = resp.headers.get("ETag")
        new = remember and etag and len(etag) <= 255 and (known is None or known.etag != etag)
        return HttpPhoto(resp.body, hashlib.sha256(resp.body).hexdigest(), pixels_of(resp.body), etag if new else None)

    def unchanged(self, shown: dict[str, str]) -> set[str]:
        """Of the users in ``shown`` (user key -> the hash of the photo their picture was made
        from), those whose photo here is still that one: the tag stored for them names those
        bytes, and the server answers 304 to it: what a sweep asks instead of a directory
        marker, which a photo server's changes do not move. One conditional HEAD each (a
        changed photo is then downloaded once, by its sync), CHECKS_AT_ONCE at a time; any
        other answer, or none, proves nothing: that user is synced (and the sync reports a
        failing server)."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(http_photos.c.username, http_photos.c.etag, http_photos.c.photo_sha256).where(
                    http_photos.c.username.in_(list(shown))
                )
            ).all()
        asked = [(row.username, row.etag) for row in rows if row.photo_sha256 == shown[row.username]]
        if not asked:
            return set()
        with ThreadPoolExecutor(min(CHECKS_AT_ONCE, len(asked))) as pool:
            answers = pool.map(self._not_modified, asked)
            return {key for (key, _), same in zip(asked, answers) if same}

    def _not_modified(self, key_and_tag: tuple[str, str]) -> bool:
        key, etag = key_and_tag
        headers = {"Accept": "image/*", "If-None-Match": etag}
        method = self._check_method
        try:
            resp = self.http.request(method, self.url_for(key), headers=headers)
            if resp.status in (405, 501) and method == "HEAD":
                self._check_method = "GET"  # a server that knows no HEAD: the whole answer, then
                resp = self.http.request("GET", self.url_for(key), headers=headers)
        except (urllib3.exceptions.HTTPError, OSError):
            return False
        return resp.status == 304

    def _known(self, key: str):
        with self.store.read() as conn:
            return conn.execute(select(http_photos).where(http_photos.c.username == key)).first()

    @staticmethod
    def remember(tx, tags: list[tuple[str, str, str, int]]) -> None:
        """Store (username, etag, photo_sha256, pixels) rows in the caller's transaction: the
        one that records the syncs' outcomes, so that a tag and the state made from its photo
        are written together (and a sweep's batch writes its tags in its one transaction)."""
        if not tags:
            return
        insert = pg_insert if tx.dialect.name == "postgresql" else sqlite_insert
        stmt = insert(http_photos)
        stmt = stmt.on_conflict_do_update(
            index_elements=["username"],
            set_={c: stmt.excluded[c] for c in ("etag", "photo_sha256", "pixels")},
        )
        rows = [{"username": user_key(u), "etag": e, "photo_sha256": h, "pixels": p} for u, e, h, p in tags]
        tx.execute(stmt, rows)
