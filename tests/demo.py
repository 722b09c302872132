"""A local demo: a real slapd and the Jira emulator, seeded with users and photos; the real
CLI syncs them, then the service runs under gunicorn and a signed webhook brings a changed
photo into Jira, so you can watch a picture arrive.

    .venv/bin/python -m tests.demo            # runs until Ctrl-C
    .venv/bin/python -m tests.demo --once     # show it all, then exit

It writes demo-state/avatar-sync.toml; while the demo runs, try the CLI and the HTTP API.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests
from PIL import Image, ImageDraw

from tests import photos
from tests.jira_emulator import EmulatorServer, JiraState
from tests.rig import slapd as slapd_rig

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "demo-state"


def portrait(colour, initial: str, width=640, height=480) -> bytes:
    """A landscape 'photo' with a face-like disc, so the centred square crop is visible."""
    im = Image.new("RGB", (width, height), (235, 235, 240))
    d = ImageDraw.Draw(im)
    cx, cy, r = width // 2, height // 2, min(width, height) // 3
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    d.text((cx - 4, cy - 6), initial, fill=(255, 255, 255))
    return photos.encode(im, "JPEG")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="jira-avatar-sync local demo")
    parser.add_argument("--once", action="store_true", help="sync the demo users, then stop")
    parser.add_argument("--jira-port", type=int, default=8090)
    parser.add_argument("--port", type=int, default=8080, help="the service's port")
    args = parser.parse_args(argv)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in the demo
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir()
    work = Path(tempfile.mkdtemp(prefix="avatar-sync-demo-"))
    ldap = slapd_rig.Slapd.running(work / "slapd")
    people = ldap.add_ou("people")
    users = {
        "alice": portrait((200, 60, 60), "A"),
        "bob": portrait((60, 120, 200), "B", 480, 640),
        "carol": None,                       # no photo: her own Jira picture is left alone
        "dave": b"this is not an image",     # invalid photo: reported, nothing touched
    }
    for name, photo in users.items():
        ldap.add_user(people, name, jpeg_photo=photo)

    state = JiraState(version="10.3.0")
    state.add_account("avatar-sync", "demo-password", admin=True)
    for name in [*users, "erin"]:            # erin is in Jira only
        state.add_user(name)
    jira = EmulatorServer(state, port=args.jira_port).__enter__()

    config = STATE / "avatar-sync.toml"
    config.write_text(f"""# written by python -m tests.demo
database_url = "sqlite:///{STATE}/state.db"
photo_attributes = ["thumbnailPhoto", "jpegPhoto"]

[jira]
url = "{jira.url}"
username = "avatar-sync"
password = "demo-password"

[webhook]
secret = "demo-webhook-secret"

[admin]
token = "demo-admin-token"

[[directories]]
name = "demo-openldap"
urls = ["{ldap.url}"]
bind_dn = "{slapd_rig.SVC_DN}"
bind_password = "{slapd_rig.SVC_PW}"
base_dn = "{people}"
user_filter = "(objectClass=inetOrgPerson)"
username_attribute = "uid"
""")
    cli = [str(Path(sys.executable).parent / "jira-avatar-sync"), "--config", str(config)]
    print(f"OpenLDAP slapd on {ldap.url}, Jira {state.version} emulator on {jira.url}\n")
    service = None
    try:
        subprocess.run([*cli, "check"], check=False)
        print()
        for name in [*users, "erin", "*)(uid=*"]:
            subprocess.run([*cli, "--log-level", "WARNING", "sync", name], check=False)
        print("\nAgain: nothing changed, so nothing is written to Jira:")
        subprocess.run([*cli, "--log-level", "WARNING", "sync", "alice"], check=False)

        service_url = f"http://127.0.0.1:{args.port}"
        print(f"\nStarting the service (gunicorn) on {service_url} ...")
        service = subprocess.Popen([*cli, "serve", "--bind", f"127.0.0.1:{args.port}"], cwd=ROOT,
                                   stdout=open(STATE / "service.log", "ab"), stderr=subprocess.STDOUT)
        _wait_for(service_url + "/healthz")
        print("readiness:", requests.get(service_url + "/readyz", timeout=10).json())
        print("\nalice gets a new photo in the directory; Jira's user_updated webhook arrives:")
        ldap.set_photo(f"uid=alice,{people}", "jpegPhoto", portrait((40, 160, 90), "A"))
        before = state.selected_avatar("alice").id
        answer = _post_webhook(service_url, {"webhookEvent": "user_updated", "user": {"name": "alice"}})
        print(f"  POST /webhooks/jira -> {answer.status_code} {answer.json()}")
        admin = {"Authorization": "Bearer demo-admin-token"}
        _wait_until(lambda: requests.get(service_url + "/admin/users/alice", headers=admin,
                                         timeout=10).json()["state"]["avatar_id"] != before)
        user = requests.get(service_url + "/admin/users/alice", timeout=10, headers=admin).json()
        print(f"  alice: {user['state']['last_outcome']}, avatar {user['state']['avatar_id']} (was {before})")
        answer = _post_webhook(service_url, {"webhookEvent": "user_login", "user": {"name": "alice"}})
        print(f"  and her next login: {answer.status_code} {answer.json()}")

        for name in ("alice", "bob"):
            avatar = state.selected_avatar(name)
            out = STATE / f"{name}-avatar.png"
            out.write_bytes(avatar.png)
            print(f"{name}'s Jira picture: {jira.url}/secure/useravatar?size=xxxlarge%402x&avatarId={avatar.id}"
                  f"  (saved to {out.relative_to(ROOT)})")
        if not args.once:
            print(f"""
Demo running (Ctrl-C stops it).
The dashboard: {service_url}/  (the browser asks for a password: demo-admin-token, any user name)
Try:
  AVATAR_SYNC_CONFIG={config.relative_to(ROOT)} .venv/bin/jira-avatar-sync sync bob --force
  curl -s -H 'Authorization: Bearer demo-admin-token' {service_url}/admin/users/bob
  curl -s -X POST -H 'Authorization: Bearer demo-admin-token' {service_url}/admin/users/bob/sync -d '{{"force": true}}' -H 'Content-Type: application/json'
  curl -s -X POST '{service_url}/webhooks/jira?token=demo-webhook-secret' -H 'Content-Type: application/json' -d '{{"webhookEvent":"user_updated","user":{{"name":"bob"}}}}'""")  # noqa: E501
            jira.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
        jira.__exit__(None, None, None)
        ldap.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _post_webhook(url: str, payload: dict) -> requests.Response:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(b"demo-webhook-secret", body, hashlib.sha256).hexdigest()
    return requests.post(url + "/webhooks/jira", data=body, timeout=10,
                         headers={"Content-Type": "application/json", "X-Hub-Signature": signature})


def _wait_for(url: str) -> None:
    _wait_until(lambda: _answers(url), 30)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except (requests.ConnectionError, requests.Timeout):  # not up yet, or its workers still booting
        return False


def _wait_until(predicate, seconds: float = 15) -> None:
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit("the demo timed out; see demo-state/service.log")


if __name__ == "__main__":
    sys.exit(main())
