"""No secret in any log line, answer or metric. Every secret is set (Jira password and token,
two LDAP bind passwords, the webhook secret, the admin token, a PostgreSQL password in the URL),
the real service runs under gunicorn with JSON logs and its access log on, and it is driven
through logins, a sweep, check, failures and bad requests. Then everything it wrote or answered
is searched for each secret."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests import photos
from tests.rig import slapd as slapd_rig
from tests.rig.children import DIE_WITH_PARENT
from tests.rig.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "jira-avatar-sync"
JIRA_USER = "jira-service-account"
SECRETS = {
    "jira_password": "jira-password-Zq81xvP3",
    "jira_token": "jira-token-Hk27wmQ9dLx4",
    "webhook": "webhook-secret-Ur58tnB6yEc2",
    "admin": "admin-token-Lp04rsV7gWn1",
    "pg_password": "pg-password-Yt63kcJ5",
    "dead_ldap_password": "dead-ldap-password-Mb39",
    "ldap_password": slapd_rig.SVC_PW,
}


def _config(tmp_path: Path, slapd, ou: str, jira_url: str, pg_url: str) -> Path:
    with_password = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRETS['pg_password']}@")
    assert SECRETS["pg_password"] in with_password
    path = tmp_path / "secretive.toml"
    path.write_text(f"""
database_url = "{with_password}"
photo_attributes = ["jpegPhoto"]
log_format = "json"
[jira]
url = "{jira_url}"
username = "{JIRA_USER}"
password = "{SECRETS['jira_password']}"
token = "{SECRETS['jira_token']}"
max_retries = 0
timeout = 5
[webhook]
secret = "{SECRETS['webhook']}"
[admin]
token = "{SECRETS['admin']}"
[worker]
threads = 2
poll_seconds = 0.2
retry_base_seconds = 0.2
retry_max_seconds = 0.5
max_attempts = 2
[[directories]]
name = "openldap"
urls = ["{slapd.url}"]
bind_dn = "{slapd_rig.SVC_DN}"
bind_password = "{SECRETS['ldap_password']}"
base_dn = "{ou}"
[[directories]]
name = "dead"
urls = ["ldap://127.0.0.1:{free_port()}"]
bind_dn = "cn=nobody"
bind_password = "{SECRETS['dead_ldap_password']}"
base_dn = "dc=dead"
connect_timeout = 1
""")
    return path


def _env(config: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    env.update(AVATAR_SYNC_CONFIG=str(config), AVATAR_SYNC_ACCESS_LOG="-")
    return env


def test_no_secret_in_any_log_line_answer_or_metric(tmp_path, slapd, ldap_ou, jira, pg_url):
    jira.state.add_account(JIRA_USER, SECRETS["jira_password"], admin=True, token=SECRETS["jira_token"])
    for name in ("anna", "ben"):
        slapd.add_user(ldap_ou, name, jpeg_photo=photos.photo())
        jira.state.add_user(name)
    slapd.add_user(ldap_ou, "broken", jpeg_photo=b"not an image")
    jira.state.add_user("broken")
    config = _config(tmp_path, slapd, ldap_ou, jira.url, pg_url)
    env = _env(config)
    seen: list[str] = []  # everything the service said, to be searched at the end

    def cli(*args):
        result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)
        seen.extend([result.stdout, result.stderr])
        return result

    assert cli("check").returncode == 1  # the dead directory fails the check
    cli("check", "--json")
    cli("--verbose", "sync", "anna")
    cli("sync", "nobody-at-all", "--json")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "service.log"
    proc = subprocess.Popen([*DIE_WITH_PARENT, str(SCRIPT), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
                            cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_up(url, proc, log)
        admin = {"Authorization": f"Bearer {SECRETS['admin']}"}

        def call(method, path, **kw):
            r = requests.request(method, url + path, timeout=30, **kw)
            seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            return r

        body = json.dumps({"webhookEvent": "user_login", "user": {"name": "ben"}}).encode()
        digest = hmac.new(SECRETS["webhook"].encode(), body, hashlib.sha256).hexdigest()
        signed = {"Content-Type": "application/json", "X-Hub-Signature": f"sha256={digest}"}
        assert call("POST", "/webhooks/jira", data=body, headers=signed).status_code == 202
        assert call("POST", "/webhooks/jira?token=" + SECRETS["webhook"], data=body.replace(b"ben", b"broken"),
                    headers={"Content-Type": "application/json"}).status_code == 202
        forged = {"X-Hub-Signature": "sha256=" + "0" * 64}
        assert call("POST", "/webhooks/jira", data=body, headers=forged).status_code == 401
        signed = {"X-Hub-Signature": "sha256=" + hmac.new(SECRETS["webhook"].encode(), b"{not json",
                                                          hashlib.sha256).hexdigest()}
        assert call("POST", "/webhooks/jira", data=b"{not json", headers=signed).status_code == 415
        wrong = {"Authorization": "Bearer " + SECRETS["admin"][:-1]}
        assert call("GET", "/admin/sweeps", headers=wrong).status_code == 401
        failed = call("POST", "/admin/users/not-upstairs/sync", json={}, headers=admin)  # sought in the dead one
        assert failed.json()["outcome"] == "failed"
        answer = call("POST", "/admin/users/anna/sync", json={"force": True}, headers=admin)
        assert answer.json()["outcome"] == "updated"
        sweep = call("POST", "/admin/sweeps", json={}, headers=admin).json()
        deadline = time.monotonic() + 60
        while call("GET", f"/admin/sweeps/{sweep['id']}", headers=admin).json()["status"] == "running":
            assert time.monotonic() < deadline, "the sweep did not end"
            time.sleep(0.3)
        for path in ("/readyz", "/metrics", "/admin/dashboard.json", "/admin/users/broken", "/admin/users?search=b",
                     f"/admin/sweeps/{sweep['id']}/problems.csv", "/"):
            call("GET", path, headers=admin)
        call("GET", "/readyz")
        assert "jira_avatar_sync_syncs_total" in call("GET", "/metrics").text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    seen.append(log.read_text())

    everything = "\n".join(seen)
    assert '"outcome": "failed"' in everything
    assert '"method": "POST", "path": "/webhooks/jira", "status": "202"' in everything
    assert "token=[redacted]" in everything  # the webhook's ?token= was in a request line
    leaks = {name: value for name, value in SECRETS.items() if value in everything}
    where = {name: everything[max(0, everything.index(v) - 200):everything.index(v) + 50] for name, v in leaks.items()}
    assert leaks == {}, f"secrets found in what the service wrote: {where}"


def _wait_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    raise AssertionError("the service did not come up:\n" + log.read_text()[-3000:])
