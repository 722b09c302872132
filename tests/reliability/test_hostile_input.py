"""Hostile input at every door, each with a clear outcome: no 500, no traceback, nothing queued
that should not be, no secret in an answer. The Flask app in-process over real slapd and the
emulator (the same doors gunicorn serves: tests/reliability/test_hostile_webhooks.py), over
a directory in memory, and over real slapd where LDAP's own escaping is what is tested."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from app import create_app
from app.worker import WorkerPool
from tests import photos
from tests.helpers import JIRA_USER, make_settings, slapd_directory
from tests.memory_directory import MemoryDirectory

SECRET, ADMIN = "hostile-input-secret-0123", "hostile-input-admin-0123"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def _app(tmp_path, jira, directory: dict | None):
    """The app over ``directory`` (settings of a real one), or over one in memory holding jdoe."""
    jira.state.add_user("jdoe")
    memory = {"name": "memory", "urls": ["ldap://memory.invalid"], "base_dn": "dc=memory"}
    settings = make_settings(tmp_path, jira.url, [directory or memory],
                             webhook={"secret": SECRET}, admin={"token": ADMIN})
    app = create_app(settings)
    app.services = app.extensions["avatar_sync"]
    if directory is None:
        in_memory = MemoryDirectory()
        in_memory.add("jdoe", photos.photo())
        app.services.directories[:] = [in_memory]
    app.http = app.test_client()
    return app


@pytest.fixture
def app(tmp_path, jira, caplog):
    app = _app(tmp_path, jira, None)
    yield app
    assert "Traceback" not in caplog.text
    assert SECRET not in caplog.text and ADMIN not in caplog.text
    app.services.close()


@pytest.fixture
def ldap_app(tmp_path, slapd, ldap_ou, jira, caplog):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    app = _app(tmp_path, jira, slapd_directory(slapd, ldap_ou))
    yield app
    assert "Traceback" not in caplog.text
    app.services.close()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook(app, body: bytes, signature: str | None = None, **headers):
    r = app.http.post("/webhooks/jira", data=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature": signature or sign(body), **headers})
    assert SECRET not in r.get_data(as_text=True)
    return r


GOOD = json.dumps({"webhookEvent": "user_login", "user": {"name": "jdoe"}}).encode()


@pytest.mark.parametrize("signature", [
    "sha1=" + hmac.new(SECRET.encode(), GOOD, hashlib.sha1).hexdigest(),       # another algorithm
    "sha512=" + hmac.new(SECRET.encode(), GOOD, hashlib.sha512).hexdigest(),
    "md5=" + hmac.new(SECRET.encode(), GOOD, hashlib.md5).hexdigest(),
    "sha256=",                                                                  # empty digest
    "sha256",                                                                   # no digest at all
    sign(GOOD)[:-1],                                                            # one digit short
    sign(GOOD) + "0",                                                           # one too many
    sign(GOOD.replace(b"jdoe", b"root")),                                       # valid, over another body
    sign(GOOD, "wrong-secret"),                                                 # another key
    "sha256=" + hashlib.sha256(GOOD).hexdigest(),                               # a plain hash, no key
    "sha256=" + "\u00e9" * 64,                                                  # not hex
])
def test_bad_signatures_are_401_and_queue_nothing(app, signature):
    r = webhook(app, GOOD, signature)
    assert r.status_code == 401
    assert app.services.queue.counts() == {}


def test_an_upper_case_signature_is_the_same_mac(app):
    assert webhook(app, GOOD, sign(GOOD).upper().replace("SHA256=", "sha256=")).status_code == 202


@pytest.mark.parametrize("payload, status, says", [
    ([1, 2], 400, "JSON object"),
    ("user", 400, "JSON object"),
    (42, 400, "JSON object"),
    (None, 400, "JSON object"),
    ({"user": "jdoe"}, 400, "user.name"),
    ({"user": ["jdoe"]}, 400, "user.name"),
    ({"user": None}, 400, "user.name"),
    ({"user": {"name": 42}}, 400, "user.name"),
    ({"user": {"name": ["jdoe"]}}, 400, "user.name"),
    ({"user": {"name": {"$ne": ""}}}, 400, "user.name"),
    ({"user": {"name": True}}, 400, "user.name"),
    ({"user": {"name": ""}}, 400, "user.name"),
    ({"user": {"name": "   "}}, 400, "user.name"),
    ({"user": {"name": "jdoe"}, "webhookEvent": 7}, 400, "webhookEvent"),
    ({"user": {"name": "jdoe"}, "webhookEvent": ["user_login"]}, 400, "webhookEvent"),
    ({"user": {"name": "jdoe"}, "webhookEvent": {"x": 1}}, 400, "webhookEvent"),
    ({"user": {"name": "jdoe"}, "webhookEvent": "jira:issue_created"}, 200, "ignored"),
])
def test_payloads_of_the_wrong_shape_have_a_clear_answer(app, payload, status, says):
    body = json.dumps(payload).encode()
    r = webhook(app, body)
    assert r.status_code == status and says in json.dumps(r.get_json())


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe{}", b"null\x00", b'{"user": {"name": "jdoe"}} trailing'])
def test_bodies_that_are_not_json_are_415(app, body):
    assert webhook(app, body).status_code == 415


def test_oversized_bodies_are_413_in_every_framing(app):
    big = json.dumps({"user": {"name": "jdoe"}, "pad": "x" * 70_000}).encode()
    assert webhook(app, big).status_code == 413
    lying = app.http.post("/webhooks/jira", data=GOOD, headers={"X-Hub-Signature": sign(GOOD)},
                          environ_overrides={"CONTENT_LENGTH": "999999999"})
    assert lying.status_code == 413
    nonsense = app.http.post("/webhooks/jira", data=GOOD, headers={"X-Hub-Signature": sign(GOOD)},
                             environ_overrides={"CONTENT_LENGTH": "12abc"})
    assert nonsense.status_code == 413


@pytest.mark.parametrize("name", ["*", "*)(uid=*", "jdoe)(|(uid=*", "\\2a", "uid=jdoe,ou=people", "(", "jdoe*"])
def test_ldap_filter_and_dn_injection_finds_nobody(ldap_app, jira, name):
    body = json.dumps({"user": {"name": name}}).encode()
    assert webhook(ldap_app, body).status_code == 202  # a name Jira could have: queued, then looked up safely
    assert WorkerPool(ldap_app.services).run_once()
    assert ldap_app.services.store.get(name).last_outcome == "not_in_directory"
    assert jira.state.writes() == 0


@pytest.mark.parametrize("path", ["/admin/users/../../etc/passwd", "/admin/users/%2e%2e%2f%2e%2e%2fetc/sync",
                                  "/admin/users/jdoe%00/sync", "/admin/sweeps/1%2f..%2f2", "/admin/sweeps/-1",
                                  "/admin/sweeps/0x10", "/admin/users//sync"])
def test_path_tricks_in_admin_urls_never_reach_anything_else(app, jira, path):
    """No route serves files: a dotted name is at most a username nobody has."""
    for method in ("GET", "POST"):
        r = app.http.open(path, method=method, json={}, headers=ADMIN_HEADERS)
        assert r.status_code in (200, 308, 400, 404, 405), (method, path, r.status_code)
        if r.status_code == 200:
            assert r.get_json().get("outcome") == "not_in_directory", r.get_json()
    assert jira.state.writes() == 0


@pytest.mark.parametrize("lookalike", ["svc\u2010jira", "\u0455vc-jira", "SVC-JIRA", "svc-jira\u200b"])
def test_lookalikes_of_the_service_account(app, lookalike):
    """Only the account itself (any case) is ignored; a lookalike is another user, or refused."""
    r = webhook(app, json.dumps({"user": {"name": lookalike}}).encode())
    if lookalike.casefold() == JIRA_USER.casefold():
        assert r.get_json()["status"] == "ignored"
    elif "\u200b" in lookalike:
        assert r.status_code == 400  # an invisible character: no Jira username has it
    else:
        assert r.status_code == 202 and r.get_json()["user"] == lookalike
