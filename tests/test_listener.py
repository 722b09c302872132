"""deploy/jira/LoginListener.groovy, run by Groovy the way ScriptRunner runs it (compiled once,
once per LoginEvent), against the real webhook on a loopback server. Jira's own classes are
stand-ins (tests/listener/stubs): the listener's logic, signature and HTTP call are real."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from app import create_app
from tests.helpers import make_settings, slapd_directory
from tests.helpers import unavailable as _unavailable
from tests.rig.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "listener"
SECRET = "listener-secret"


def groovy_env() -> dict:
    if not shutil.which("groovy"):
        _unavailable("Groovy (apt-get install groovy)")
    env = dict(os.environ)
    if not Path(env.get("JAVA_HOME", "/usr/lib/jvm/default-java"), "bin", "java").exists():
        java = shutil.which("java") or _unavailable("Java (apt-get install groovy brings it)")
        env["JAVA_HOME"] = str(Path(os.path.realpath(java)).parents[1])
    return env


def listener_for(tmp_path: Path, url: str, account: str = "avatar-sync") -> Path:
    """The shipped listener with its three settings filled in, as an admin would."""
    secret_file = tmp_path / "avatar-sync.secret"
    secret_file.write_text(SECRET + "\n")
    text = (ROOT / "deploy/jira/LoginListener.groovy").read_text()
    for name, value in (("SERVICE_URL", url), ("SECRET_FILE", str(secret_file)), ("SERVICE_ACCOUNT", account)):
        text, found = re.subn(rf'^final String {name} = ".*?"', f'final String {name} = "{value}"', text,
                              flags=re.MULTILINE)
        assert found == 1, f"{name} is no longer a setting of the listener"
    path = tmp_path / "LoginListener.groovy"
    path.write_text(text)
    return path


def run_listener(listener: Path, *users: str, gap_ms: int = 0, wait_ms: int = 3000) -> subprocess.CompletedProcess:
    """Each user logs in once, in order, ``gap_ms`` apart; the JVM exits ``wait_ms`` after."""
    return subprocess.run(["groovy", "-cp", str(HERE / "stubs"), str(HERE / "drive.groovy"), str(listener),
                           str(gap_ms), str(wait_ms), *users], env=groovy_env(), capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def service(tmp_path, slapd, ldap_ou, jira):
    """The real app on a loopback HTTP server; every webhook request it answered is recorded."""
    settings = make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)], webhook={"secret": SECRET})
    app = create_app(settings)
    seen = []

    def recording(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)

        def start(status, headers, exc_info=None):
            seen.append((environ["PATH_INFO"], int(status.split()[0]), json.loads(body)))
            return start_response(status, headers, exc_info)
        return app(environ, start)
    server = make_server("127.0.0.1", free_port(), recording, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}/webhooks/jira", seen
    server.shutdown()
    app.extensions["avatar_sync"].close()


def test_listener_posts_each_login_signed_once_and_skips_the_service_account(tmp_path, service):
    app, url, seen = service
    done = run_listener(listener_for(tmp_path, url), "alice", "avatar-sync", "alice", "Bob")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["ran alice", "ran avatar-sync", "ran alice", "ran Bob"]
    # alice's second login within POST_EVERY_MS is not posted; the service account never is
    assert sorted((path, status, body["user"]["name"]) for path, status, body in seen) == [
        ("/webhooks/jira", 202, "Bob"), ("/webhooks/jira", 202, "alice")]  # 202: the signature held
    body = next(body for _, _, body in seen if body["user"]["name"] == "alice")
    assert body["webhookEvent"] == "user_login" and body["user"]["key"] == "JIRAUSER-alice"
    queue = app.extensions["avatar_sync"].queue
    assert queue.job_for("alice") and queue.job_for("bob") and not queue.job_for("avatar-sync")
    assert "WARN jira-avatar-sync" not in done.stderr  # (the JVM may warn about other things)


def test_an_unreachable_service_only_logs_and_the_next_login_tries_again(tmp_path, service):
    _, _, seen = service
    closed = f"http://127.0.0.1:{free_port()}/webhooks/jira"
    # the gap lets the first failure come back (a refused connection takes milliseconds)
    done = run_listener(listener_for(tmp_path, closed), "carol", "carol", gap_ms=1500, wait_ms=1500)
    assert done.returncode == 0, done.stderr  # the login itself never sees the failure
    # not throttled after a failed delivery: both logins were tried, and both failures logged
    assert done.stderr.count("login of carol not delivered") == 2, done.stderr
    assert seen == []
