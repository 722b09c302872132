"""Soak run, on demand: the real service under gunicorn against real slapd and the emulator, for
a while, with logins, photo changes, sweeps and injected faults all the time.

    .venv/bin/python -m tests.bench.soak [--minutes 30] [--users 200] [--logins-per-second 20]

Faults, in turn, one a minute: Jira answering 503 for 10 s; a 429 storm with Retry-After; Jira
slower than the service's timeout for 10 s; slapd restarted. Reported at the end, after the
faults stop and the queue drains: logins accepted (202) and whether each accepted login was
followed by a sync of that user (lost = not), uploads against distinct photos set in the
directory (a last sweep brings the final changes in, as in production), pictures that do not match the
directory, and the service's memory (all gunicorn
processes, RSS) at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests

from tests import photos
from tests.helpers import ADMIN, Service, signed
from tests.jira_emulator import EmulatorServer, JiraState
from tests.rig import slapd as slapd_rig

COLOURS = [photos.RED, photos.GREEN, photos.BLUE, photos.YELLOW, (128, 0, 128), (0, 128, 128)]


def rss_mb(pid: int) -> float:
    """RSS of a process and all its children (gunicorn's master and workers)."""
    out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    own = Path(f"/proc/{pid}/status").read_text()
    kb = int(next(line.split()[1] for line in own.splitlines() if line.startswith("VmRSS:")))
    return (kb + sum(int(x) for x in out.split())) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--logins-per-second", type=float, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="avatar-soak-"))
    ldap = slapd_rig.Slapd.running(work / "slapd")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        ou = ldap.add_ou("people")
        names = [f"soak{i:04d}" for i in range(args.users)]
        colour = {n: random.choice(COLOURS) for n in names}
        ldap.add_users(ou, [(n, photos.solid(colour[n], 64)) for n in names])
        photos_set = len(names)  # distinct photos the directory ever had
        state = JiraState(version="11.0.0")
        state.add_account("svc-jira", "jira-secret", admin=True)
        for n in names:
            state.add_user(n)
        with EmulatorServer(state) as jira:
            svc = Service(work, ldap, ou, jira.url)
            svc.start()
            time.sleep(2)
            rss_start = rss_mb(svc.pid)
            accepted: dict[str, float] = {}  # user -> when its last login was accepted
            answers: dict[int, int] = {}
            lock = threading.Lock()
            stop = threading.Event()

            def login(name: str) -> None:
                body = json.dumps({"webhookEvent": "user_login", "user": {"name": name}}).encode()
                try:
                    status = requests.post(svc.url + "/webhooks/jira", data=body, headers=signed(body),
                                           timeout=10).status_code
                except requests.RequestException:
                    status = 0
                with lock:
                    answers[status] = answers.get(status, 0) + 1
                    if status == 202:
                        accepted[name] = time.time()

            def logins() -> None:
                with ThreadPoolExecutor(4) as pool:
                    while not stop.is_set():
                        pool.submit(login, random.choice(names))
                        time.sleep(1 / args.logins_per_second)

            threading.Thread(target=logins, daemon=True).start()
            started, faults, sweeps = time.monotonic(), 0, 0
            end = started + args.minutes * 60
            next_change, next_fault, next_sweep = started + 30, started + 60, started + 120
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_change:
                    for n in random.sample(names, min(10, len(names))):
                        colour[n] = random.choice([c for c in COLOURS if c != colour[n]])
                        ldap.set_photo(f"uid={n},{ou}", "jpegPhoto", photos.solid(colour[n], 64))
                        photos_set += 1
                    next_change = now + 30
                if now >= next_sweep:
                    requests.post(svc.url + "/admin/sweeps", json={}, headers=admin, timeout=30)
                    sweeps += 1
                    next_sweep = now + 120
                if now >= next_fault:
                    kind = faults % 4
                    if kind == 0:
                        state.inject(503, path="/rest/", seconds=10, retry_after=1)
                    elif kind == 1:
                        state.inject(429, path="/rest/api/2/user", count=40, retry_after=1)
                    elif kind == 2:
                        state.latency = 6  # the service's jira.timeout is 5 s
                        threading.Timer(10, lambda: setattr(state, "latency", 0)).start()
                    else:
                        ldap.restart()
                    faults += 1
                    next_fault = now + 60
                time.sleep(0.5)
            stop.set()
            state.faults.clear()
            state.latency = 0
            time.sleep(1)
            # the directory's last changes reach Jira as they would in production: by a sweep
            deadline = time.monotonic() + 600
            final = requests.post(svc.url + "/admin/sweeps", json={}, headers=admin, timeout=30)
            while final.status_code == 409 and time.monotonic() < deadline:  # one still runs
                time.sleep(2)
                final = requests.post(svc.url + "/admin/sweeps", json={}, headers=admin, timeout=30)
            sweeps += 1
            while time.monotonic() < deadline:
                status = requests.get(f"{svc.url}/admin/sweeps/{final.json()['id']}", headers=admin,
                                      timeout=30).json()["status"]
                queue = requests.get(svc.url + "/admin/dashboard.json", headers=admin, timeout=30).json()["queue"]
                if status != "running" and not queue:
                    break
                time.sleep(2)
            lost = []
            for n, when in accepted.items():
                user = requests.get(f"{svc.url}/admin/users/{n}", headers=admin, timeout=30).json()
                last = (user.get("state") or {}).get("last_attempt_at")
                if not last or datetime.fromisoformat(last).timestamp() < when - 1:
                    lost.append(n)
            wrong = [n for n in names if not photos.close(photos.dominant(state.selected_avatar(n).png), colour[n])]
            result = {
                "minutes": args.minutes, "users": args.users, "logins_answered": answers,
                "logins_accepted_users": len(accepted), "accepted_logins_lost": len(lost),
                "photos_set_in_directory": photos_set, "uploads": state.count("POST /user/avatar/temporary"),
                "pictures_not_matching_the_directory": len(wrong), "sweeps_started": sweeps, "faults": faults,
                "queue_at_end": queue, "rss_mb_start": round(rss_start), "rss_mb_end": round(rss_mb(svc.pid)),
            }
            svc.stop()
    finally:
        ldap.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("AVATAR_SYNC_LOG_LEVEL", "WARNING")
    main()
