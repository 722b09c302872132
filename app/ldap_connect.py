"""Opening a bound LDAP connection to one of a directory's servers: each URL in order
(fail-over), TLS as configured, every operation within an overall deadline. app/directory.py
pools what this opens and searches with it.
"""

from __future__ import annotations

import logging
import ssl
from contextlib import contextmanager
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.strategy.sync import SyncStrategy
from ldap3.utils.conv import to_unicode

from . import deadlines
from .config import DirectorySettings
from .metrics import LDAP_ERRORS

log = logging.getLogger(__name__)

# what a refused bind says: wrong on every server alike, so the others are not tried
REFUSED = (
    "invalidCredentials",
    "inappropriateAuthentication",
    "insufficientAccessRights",
    "confidentialityRequired",
    "strongerAuthRequired",
)


class DirectoryUnavailable(Exception):
    """The directory could not answer (down, bind refused, timeout). Retry later."""

    def __init__(self, directory: str, reason: str):
        super().__init__(f"directory {directory}: {reason}")
        self.directory, self.reason = directory, reason
        LDAP_ERRORS.labels(directory).inc()  # raised wherever a directory call failed: counted once, here


class TooSlow(LDAPException):
    """The server took longer than the whole operation may (not worth a second try)."""


class _BindRefused(Exception):
    pass


@contextmanager
def deadline(conn: ldap3.Connection, settings: DirectorySettings):
    """One LDAP operation within connect_timeout + timeout, however slowly the server drips
    its answer (app/deadlines.py); past it the connection is shut and dropped."""
    seconds = settings.connect_timeout + settings.timeout
    with deadlines.guard(conn.socket, seconds) as guard:
        try:
            yield
        except LDAPException:
            if guard.fired:
                raise TooSlow(f"no answer within {seconds:g}s") from None
            raise


def connect(settings: DirectorySettings) -> ldap3.Connection:
    """Open and bind a connection, trying each URL in order (fail-over)."""
    errors = []
    for url in settings.urls:
        try:
            return _connect_one(settings, url)
        except _BindRefused as exc:
            # Wrong credentials are wrong on every server: do not hammer the others.
            raise DirectoryUnavailable(settings.name, str(exc)) from None
        except (LDAPException, OSError, ssl.SSLError) as exc:
            errors.append(f"{url}: {exc}")
            log.warning("directory %s: cannot use %s: %s", settings.name, url, exc)
    raise DirectoryUnavailable(settings.name, "no server reachable (" + "; ".join(errors) + ")")


def _connect_one(s: DirectorySettings, url: str) -> ldap3.Connection:
    parts = urlsplit(url)
    use_ssl = parts.scheme == "ldaps"
    tls = None
    if use_ssl or s.start_tls:
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if s.verify_tls else ssl.CERT_NONE,
            ca_certs_file=s.ca_file or None,
            version=None,
        )
    # A new Server per attempt: a failed open marks a shared Server unusable for ~5 s.
    server = ldap3.Server(
        parts.hostname,
        port=parts.port or (636 if use_ssl else 389),
        use_ssl=use_ssl,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=s.connect_timeout,
    )
    # SYNC, not SAFE_SYNC: a connection is lent to one thread at a time (app/directory.py's
    # pool), and SAFE_SYNC deep-copies every response, a tenth of a lookup's CPU.
    conn = ldap3.Connection(
        server,
        user=s.bind_dn or None,
        password=s.bind_password or None,
        client_strategy=ldap3.SYNC,
        receive_timeout=int(s.timeout),
        read_only=True,
        raise_exceptions=False,
        auto_referrals=False,
        # no schema is read (get_info=NONE) and only raw_attributes are used: without this ldap3
        # formats every value of every entry a second time (4% of a sweep's paging CPU)
        check_names=False,
        # _LeanEntries' entries have no formatted 'attributes' for these two to fill in; a
        # missing attribute is simply absent, and no attribute asked for comes in ranges
        return_empty_attributes=False,
        auto_range=False,
    )
    conn.strategy.__class__ = _LeanEntries  # before open(): every answer is decoded by it
    conn.open()
    with deadline(conn, s):
        if s.start_tls and not use_ssl:
            conn.start_tls()
        bound = conn.bind()
    if not bound:
        description = (conn.result or {}).get("description", "bind failed")
        try:
            conn.unbind()
        except LDAPException:
            pass
        if description in REFUSED:
            raise _BindRefused(f"bind as {s.bind_dn or 'anonymous'} refused: {description}")
        raise LDAPException(f"bind failed: {description}")
    return conn


class _LeanEntries(SyncStrategy):
    """ldap3's SYNC strategy, decoding a search entry into only what the service reads: its
    DN and ``raw_attributes``, a plain dict of lower-case attribute name -> raw values. ldap3's
    own decoding builds two case-insensitive dicts and decodes every value as text, which was
    half of a sweep's paging CPU (docs/performance.md, "Leaner directory entries"). ldap3 2.9.1
    binds the strategy's methods when a Connection is made, so the class of the instance it
    made is swapped rather than the instance replaced."""

    def decode_response_fast(self, ldap_message):
        if ldap_message["protocolOp"] != 4 or ldap_message["controls"]:  # not an entry, or rare
            return super().decode_response_fast(ldap_message)
        dn, attributes = ldap_message["payload"]  # SearchResultEntry: objectName, attributes
        raw = {}
        for attribute in attributes[3]:
            name, values = attribute[3]  # PartialAttribute: type, vals
            raw[name[3].decode("utf-8").lower()] = [bytes(value[3]) for value in values[3]]
        return {"type": "searchResEntry", "dn": to_unicode(dn[3], from_server=True), "raw_attributes": raw}
