"""The emulator's own HTTP server (tests/rig/keepalive_server.py): what the other tests rely on
it doing as Jira's Tomcat does."""
from __future__ import annotations

import base64
import http.client
import json
import threading

import pytest

from tests.jira_emulator import EmulatorServer, JiraState
from tests.rig.keepalive_server import KeepAliveServer

AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}


@pytest.fixture
def emulator():
    state = JiraState(version="11.0.0")
    state.add_account("admin", "pw", admin=True)
    state.add_user("jdoe")
    with EmulatorServer(state) as server:
        yield server


def connect(server) -> http.client.HTTPConnection:
    host, port = server.server.server_address[:2]
    return http.client.HTTPConnection(host, port, timeout=5)


def get_user(conn, name="jdoe", **headers):
    conn.request("GET", f"/rest/api/2/user?username={name}", headers={**AUTH, **headers})
    resp = conn.getresponse()
    return resp, resp.read()


def test_one_connection_serves_call_after_call(emulator):
    conn = connect(emulator)
    get_user(conn)
    first = conn.sock
    for _ in range(5):
        resp, body = get_user(conn)
        assert resp.status == 200 and json.loads(body)["name"] == "jdoe"
    assert conn.sock is first  # never reconnected: the server kept it open


def test_connection_close_is_honoured(emulator):
    conn = connect(emulator)
    resp, _ = get_user(conn, Connection="close")
    assert resp.status == 200 and resp.getheader("Connection") == "close"
    assert conn.sock is None  # http.client saw the close and let go of the socket


def test_going_down_cuts_open_connections_and_coming_back_keeps_the_state(emulator):
    conn = connect(emulator)
    get_user(conn)
    emulator.go_down()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        get_user(conn)  # the kept-alive connection is gone too, as on a Jira node that died
    with pytest.raises(ConnectionRefusedError):
        get_user(connect(emulator))
    emulator.come_back()
    emulator.state.add_user("later")
    resp, body = get_user(connect(emulator), "later")
    assert resp.status == 200 and json.loads(body)["name"] == "later"


def test_request_bodies_arrive_whole_with_a_length_or_chunked():
    seen = []

    def app(environ, start_response):
        seen.append((environ["wsgi.input"].read(), environ.get("CONTENT_LENGTH")))
        start_response("204 No Content", [])
        return []

    server = KeepAliveServer(("127.0.0.1", 0), app)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
        conn.request("POST", "/x", body=b"abc")
        conn.getresponse().read()
        conn.request("POST", "/x", body=iter([b"de", b"fgh"]), encode_chunked=True)
        conn.getresponse().read()
    finally:
        server.stop()
    assert seen == [(b"abc", "3"), (b"defgh", None)]
