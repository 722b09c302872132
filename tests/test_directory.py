"""Directory against a real slapd and a real Samba AD DC."""
from __future__ import annotations

import threading
from urllib.parse import urlsplit

import ldap3
import pytest

from app.config import settings_from_dict
from app.directory import Directory, DirectoryUnavailable
from app.ldap_connect import connect
from tests import photos
from tests.helpers import samba_directory, slapd_directory
from tests.rig.ports import free_port


def directory(dir_conf: dict, attributes=("thumbnailPhoto", "jpegPhoto")) -> Directory:
    settings = settings_from_dict({"jira": {"url": "http://jira.invalid", "token": "t"},
                                   "directories": [dir_conf]})
    return Directory(settings.directories[0], tuple(attributes))


def test_photo_is_read_as_raw_bytes(slapd, ldap_ou):
    raw = photos.photo() + b"\x00\xff\x80 trailing binary"
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=raw)
    entry = directory(slapd_directory(slapd, ldap_ou)).lookup("jdoe")
    assert entry.photo == raw and entry.photo_attribute == "jpegPhoto"
    assert entry.dn == f"uid=jdoe,{ldap_ou}"


def test_user_without_photo_and_unknown_user(slapd, ldap_ou):
    slapd.add_user(ldap_ou, "nophoto")
    d = directory(slapd_directory(slapd, ldap_ou))
    assert d.lookup("nophoto").photo is None
    assert d.lookup("nobody") is None


def test_reconnects_transparently_after_slapd_restart(slapd, ldap_ou):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=b"one")
    d = directory(slapd_directory(slapd, ldap_ou))
    assert d.lookup("jdoe").photo == b"one"
    slapd.restart()
    assert d.lookup("jdoe").photo == b"one"


def test_fails_over_when_the_first_url_is_dead(slapd, ldap_ou):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=b"one")
    dead = f"ldap://127.0.0.1:{free_port()}"
    d = directory(slapd_directory(slapd, ldap_ou, urls=[dead, slapd.url]))
    assert d.lookup("jdoe").photo == b"one"


def test_unreachable_directory_raises_instead_of_answering_not_found(ldap_ou, slapd):
    d = directory(slapd_directory(slapd, ldap_ou, urls=[f"ldap://127.0.0.1:{free_port()}"]))
    with pytest.raises(DirectoryUnavailable, match="no server reachable"):
        d.lookup("jdoe")


class DrippingProxy:
    """A loopback TCP proxy in front of slapd that passes the server's first ``fast`` answers
    whole, then drips the rest one byte every 0.3 s: never slow enough for a per-read
    timeout to trip."""

    def __init__(self, target_port: int, fast: int):
        import socket
        self.fast, self.target = fast, ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ldap://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.fast), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, fast):
        import time
        answers = 0
        try:
            while data := src.recv(65536):
                if fast is None or answers < fast:
                    dst.sendall(data)
                    answers += 1
                    continue
                for i in range(len(data)):
                    dst.sendall(data[i:i + 1])
                    time.sleep(0.3)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("fast", [0, 1], ids=["bind", "search"])
def test_a_directory_that_drips_its_answer_is_cut_off_at_the_operations_deadline(slapd, ldap_ou, fast):
    """A per-read timeout of 1 s never trips on a byte every 0.3 s; the operation's deadline
    (connect_timeout + timeout) does, for the bind and for a search."""
    import time
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    proxy = DrippingProxy(int(slapd.url.rsplit(":", 1)[1]), fast)
    try:
        d = directory(slapd_directory(slapd, ldap_ou, urls=[proxy.url], timeout=1, connect_timeout=1))
        started = time.monotonic()
        with pytest.raises(DirectoryUnavailable, match="no answer within 2s"):
            d.lookup("jdoe")
        assert time.monotonic() - started < 3.5  # not the minutes the drip takes
    finally:
        proxy.close()


def test_wrong_bind_password_is_reported_clearly(slapd, ldap_ou):
    d = directory(slapd_directory(slapd, ldap_ou, bind_password="wrong"))
    with pytest.raises(DirectoryUnavailable, match="invalidCredentials"):
        d.lookup("jdoe")
    with pytest.raises(DirectoryUnavailable, match="invalidCredentials"):
        d.check()


def test_two_entries_for_one_username_is_an_error_not_a_guess(slapd, ldap_ou):
    slapd.add_user(ldap_ou, "twin", jpeg_photo=b"a")
    sub = slapd.add_ou(ldap_ou.split(",")[0][3:] + "sub")
    slapd.add_user(sub, "twin", jpeg_photo=b"b")
    d = directory(slapd_directory(slapd, "dc=example,dc=org"))
    with pytest.raises(DirectoryUnavailable, match="more than one entry"):
        d.lookup("twin")


def test_lookup_many_reads_a_batch_past_the_size_limit_and_leaves_doubts_to_lookup(slapd, ldap_ou):
    """One search for a worker's batch, paged (the service account's size limit is 5), answers
    exactly as lookup() would, keyed as asked; a username held twice is left to lookup()."""
    for i in range(7):
        slapd.add_user(ldap_ou, f"b{i}", jpeg_photo=f"photo-{i}".encode())
    slapd.add_user(ldap_ou, "nophoto")
    slapd.add_user(ldap_ou, "twin", jpeg_photo=b"a")
    with slapd.admin() as c:  # a branch below: the same uid twice under one base
        c.add(f"ou=more,{ldap_ou}", ["organizationalUnit"], {"ou": "more"})
    slapd.add_user(f"ou=more,{ldap_ou}", "twin", jpeg_photo=b"b")
    d = directory(slapd_directory(slapd, ldap_ou))
    asked = [f"b{i}" for i in range(6)] + ["B6", "nophoto", "twin", "nobody", "*"]
    found, absent = d.lookup_many(asked)
    assert sorted(found) == ["B6", "b0", "b1", "b2", "b3", "b4", "b5", "nophoto"]
    assert found["B6"] == d.lookup("b6") and found["b3"].photo == b"photo-3"
    assert found["nophoto"].photo is None and found["nophoto"].marker
    assert sorted(absent) == ["*", "nobody"]  # surely not held; "twin" is in neither
    # LDAP's matching ignores a trailing space, a plain comparison does not: the entry that
    # came back answers no asked name, so no absent name can be trusted to be absent either
    assert d.lookup_many(["b1 ", "nobody"]) == ({}, [])


def test_lookup_many_of_an_unreachable_directory_answers_nothing(slapd, ldap_ou):
    d = directory(slapd_directory(slapd, ldap_ou, urls=[f"ldap://127.0.0.1:{free_port()}"]))
    assert d.lookup_many(["jdoe"]) == ({}, [])  # lookup() then raises, as for a single user


def test_concurrent_lookups_share_the_pool_correctly(slapd, ldap_ou):
    for i in range(8):
        slapd.add_user(ldap_ou, f"u{i}", jpeg_photo=f"photo-{i}".encode())
    d = directory(slapd_directory(slapd, ldap_ou, pool_size=3))
    errors = []

    def work(i):
        for _ in range(15):
            entry = d.lookup(f"u{i}")
            if entry.photo != f"photo-{i}".encode():
                errors.append((i, entry.photo))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert d._pool.get()[0].qsize() <= 3  # no more idle connections than pool_size


def test_samba_ad_thumbnail_photo_by_sam_account_name(samba, ad_ou):
    raw = photos.photo(96, 96)
    samba.add_user(ad_ou, "dirtest-photo", thumbnail_photo=raw)
    samba.add_user(ad_ou, "dirtest-nophoto")
    d = directory(samba_directory(ad_ou))
    entry = d.lookup("dirtest-photo")
    assert entry.photo == raw and entry.photo_attribute == "thumbnailPhoto"
    assert d.lookup("dirtest-nophoto").photo is None
    for hostile in ["*", "*)(sAMAccountName=*", "dirtest*", "admin)(|(objectClass=*"]:
        assert d.lookup(hostile) is None


@pytest.mark.parametrize("server", ["slapd", "samba"])
def test_entries_are_decoded_as_ldap3_itself_decodes_them(server, request):
    """app/ldap_connect.py decodes search entries itself (DN and raw values only): the same
    search on a connection ldap3 decodes must give the same DNs and raw values."""
    raw = photos.photo() + b"\x00\xff\x80"
    if server == "slapd":
        rig, base = request.getfixturevalue("slapd"), request.getfixturevalue("ldap_ou")
        rig.add_user(base, "j\u00f6rg,=+x", jpeg_photo=raw, thumbnail_photo=b"t")  # two objectClass values
        conf = slapd_directory(rig, base)
    else:
        rig, base = request.getfixturevalue("samba"), request.getfixturevalue("ad_ou")
        rig.add_user(base, "dirtest-j\u00f6rg", thumbnail_photo=raw)
        conf = samba_directory(base)
    rig.add_user(base, "dirtest-plain")
    s = settings_from_dict({"jira": {"url": "http://jira.invalid", "token": "t"}, "directories": [conf]})
    d = s.directories[0]
    asked = [d.username_attribute, "jpegPhoto", "thumbnailPhoto", "uSNChanged", "entryCSN", "modifyTimestamp",
             "whenChanged", "objectClass"]

    def search(conn):
        conn.search(base, d.user_filter, attributes=asked)
        return {e["dn"]: {k.lower(): v for k, v in e["raw_attributes"].items() if v}
                for e in conn.response if e["type"] == "searchResEntry"}

    lean = connect(d)
    url = urlsplit(d.urls[0])
    plain = ldap3.Connection(ldap3.Server(url.hostname, url.port, get_info=ldap3.NONE), d.bind_dn, d.bind_password,
                             auto_bind=True)
    try:
        ours, theirs = search(lean), search(plain)
    finally:
        lean.unbind()
        plain.unbind()
    assert len(ours) == 2 and ours == theirs
    photo_attribute = "jpegphoto" if server == "slapd" else "thumbnailphoto"
    assert [raw] in [entry.get(photo_attribute) for entry in ours.values()]
    assert all(entry.get("modifytimestamp") for entry in ours.values())


def test_ldaps_verifies_the_certificate_by_default(slapd, ldap_ou):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=b"one")
    untrusted = directory(slapd_directory(slapd, ldap_ou, urls=[slapd.ldaps_url]))
    with pytest.raises(DirectoryUnavailable, match="(?i)certificate"):
        untrusted.lookup("jdoe")
    trusted = directory(slapd_directory(slapd, ldap_ou, urls=[slapd.ldaps_url], ca_file=str(slapd.ca_file)))
    assert trusted.lookup("jdoe").photo == b"one"
    opted_out = directory(slapd_directory(slapd, ldap_ou, urls=[slapd.ldaps_url], verify_tls=False))
    assert opted_out.lookup("jdoe").photo == b"one"


def test_ldaps_checks_the_host_name(slapd, ldap_ou):
    # the certificate is for localhost; a different name for the same server must be refused
    port = slapd.ldaps_url.rsplit(":", 1)[1]
    other_name = directory(slapd_directory(slapd, ldap_ou, urls=[f"ldaps://127.0.0.1:{port}"],
                                           ca_file=str(slapd.ca_file)))
    with pytest.raises(DirectoryUnavailable):
        other_name.lookup("jdoe")


def test_start_tls(slapd, ldap_ou):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=b"one")
    url = slapd.url.replace("127.0.0.1", "localhost")
    d = directory(slapd_directory(slapd, ldap_ou, urls=[url], start_tls=True, ca_file=str(slapd.ca_file)))
    assert d.lookup("jdoe").photo == b"one"
    untrusted = directory(slapd_directory(slapd, ldap_ou, urls=[url], start_tls=True))
    with pytest.raises(DirectoryUnavailable):
        untrusted.lookup("jdoe")
