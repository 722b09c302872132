"""What answers as Jira may be broken or hostile: every answer ends in a clear JiraError, the
credentials go to no other host, and no answer can take the service's memory."""
from __future__ import annotations

import gzip
import http.server
import json
import threading

import pytest

from app.config import JiraSettings
from app.jira import JiraClient, JiraError, JiraRequestError


class FakeJira:
    """A loopback server answering every GET with what ``answer(handler)`` writes."""

    def __init__(self, answer):
        self.requests: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
                answer(self)

            do_PUT = do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def reply(handler, status: int, body: bytes, headers: dict | None = None):
    handler.send_response(status)
    for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def fake():
    made = []

    def make(answer):
        made.append(FakeJira(answer))
        return made[-1]
    yield make
    for server in made:
        server.close()


def client(url) -> JiraClient:
    return JiraClient(JiraSettings(url=url, username="svc", password="the-jira-password", max_retries=0,
                                   timeout=5, connect_timeout=2))


def test_html_instead_of_json_is_a_clear_error(fake):
    jira = fake(lambda h: reply(h, 200, b"<html><body>Login</body></html>", {"Content-Type": "text/html"}))
    with pytest.raises(JiraError, match="no JSON .text/html."):
        client(jira.url).get_user("jdoe")


def test_json_of_the_wrong_shape_is_a_clear_error(fake):
    jira = fake(lambda h: reply(h, 200, b"[1, 2, 3]", {"Content-Type": "application/json"}))
    with pytest.raises(JiraError, match="unexpected JSON"):
        client(jira.url).myself()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_another_host_is_reported_and_never_followed(fake, status):
    elsewhere = fake(lambda h: reply(h, 200, b"{}", {"Content-Type": "application/json"}))
    jira = fake(lambda h: reply(h, status, b"", {"Location": elsewhere.url + "/steal"}))
    with pytest.raises(JiraRequestError, match="redirect"):
        client(jira.url).get_user("jdoe")
    assert elsewhere.requests == []  # the credentials never left for the other host
    assert jira.requests[0]["auth"].startswith("Basic ")


def test_a_gzip_bomb_is_cut_off_before_it_takes_the_memory(fake):
    bomb = gzip.compress(b"\0" * (64 * 2**20), compresslevel=9)  # ~64 KB that inflates to 64 MB
    assert len(bomb) < 200_000
    jira = fake(lambda h: reply(h, 200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}))
    with pytest.raises(JiraError, match=f"over {16 * 2**20} bytes"):
        client(jira.url).get_user("jdoe")


def test_an_error_answer_with_a_body_of_its_own_is_reported_in_a_line(fake):
    body = json.dumps({"errorMessages": ["x" * 5000]}).encode()
    jira = fake(lambda h: reply(h, 400, body, {"Content-Type": "application/json"}))
    with pytest.raises(JiraRequestError) as refused:
        client(jira.url).get_user("jdoe")
    assert len(str(refused.value)) < 400 and "the-jira-password" not in str(refused.value)
