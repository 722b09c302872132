"""Benchmark: webhook acknowledgement under gunicorn, and login -> avatar selected latency.

Run on demand (not part of the test suite):

    apt-get install -y wrk
    .venv/bin/python -m tests.bench.bench_webhook [--duration 15] [--connections 32]

1. Ack: wrk sends signed user_login webhooks (X-Hub-Signature over each body), every request a
   different user, so each one takes the full path: size check, HMAC, parse, debounce lookup,
   one durable queue insert, 202. Run once with the sync workers off (the door alone) and once
   with them on (the workers compete for the same 2 cores, syncing users not in the directory).
   Reported with how wrk's keep-alive connections landed on the gunicorn workers: when one
   worker holds them all, the run measures that worker alone.
2. Login -> avatar: one signed login at a time for users with a thumbnailPhoto (96 px, or
   --photo-px; --latency-only runs this part alone); the time
   from sending the webhook until the emulator has processed the PUT that selects the avatar.
   Reported as measured, and minus the time spent inside the emulator for that user (its added
   latency on the 4 Jira calls of the path, GET user, temporary upload, crop-confirm, select,
   plus its own handling of them, Pillow included): what remains is this service's part.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from tests import photos
from tests.jira_emulator import EmulatorServer, JiraState
from tests.rig import slapd as slapd_rig
from tests.rig.ports import free_port
from tests.rig.service_config import slapd_section, write_service_config

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bench-secret"

WRK_LUA = """
local bodies, sigs, n, i = {}, {}, 0, 0
for line in io.lines("%(file)s") do
  local sig, body = line:match("^(%%S+) (.*)$")
  n = n + 1; sigs[n] = sig; bodies[n] = body
end
request = function()
  i = i %% n + 1
  return wrk.format("POST", "/webhooks/jira",
    {["Content-Type"] = "application/json", ["X-Hub-Signature"] = sigs[i]}, bodies[i])
end
"""


def start_gunicorn(config: Path, port: int, log: Path, env_extra: dict) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    env.update(AVATAR_SYNC_CONFIG=str(config), **env_extra)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py",
                             "--bind", f"127.0.0.1:{port}", "app:create_app()"],
                            cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.RequestException:  # not listening yet, or its workers still booting
            time.sleep(0.1)
    raise SystemExit("gunicorn did not start: " + log.read_text()[-2000:])


def write_config(path: Path, work: Path, jira_url: str, ldap, base_dn: str, workers_on: bool,
                 database_url: str | None = None) -> None:
    """``database_url``: default a SQLite file in ``work``."""
    write_service_config(
        path, database_url=database_url or f"sqlite:///{work}/state.db", login_debounce_seconds=600,
        jira={"url": jira_url, "username": "avatar-sync", "password": "pw"}, webhook={"secret": SECRET},
        worker={"threads": 2, "poll_seconds": 0.5, "start_in_web": workers_on},
        directories=[slapd_section(ldap.url, base_dn)])


def signed_bodies(path: Path, count: int, prefix: str) -> None:
    with path.open("w") as fh:
        for i in range(count):
            body = json.dumps({"webhookEvent": "user_login", "timestamp": 1700000000000,
                               "user": {"name": f"{prefix}{i}"}}, separators=(",", ":"))
            sig = "sha256=" + hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
            fh.write(f"{sig} {body}\n")


def connections_per_worker(port: int) -> list[int] | None:
    """How wrk's keep-alive connections are spread over the gunicorn workers, busiest first.
    The workers race to accept them, and a run where one worker holds three or four of them
    measures that worker alone. None without `ss` (iproute2)."""
    try:
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    pids = re.findall(r"pid=(\d+)", out)
    return sorted((pids.count(p) for p in set(pids)), reverse=True)


def wrk(port: int, lua: Path | None, duration: int, connections: int, threads: int = 1,
        path: str = "/webhooks/jira") -> dict:
    script = ["-s", str(lua)] if lua else []
    proc = subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", *script,
                             f"http://127.0.0.1:{port}{path}"], stdout=subprocess.PIPE, text=True)
    time.sleep(duration / 2)  # wrk's threads each load the bodies file before they connect
    split = connections_per_worker(port)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"wrk failed ({proc.returncode})")
    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return {"rps": float(rps.group(1)),
            "p50_ms": ms("50"), "p99_ms": ms("99"), "errors": int(non2xx.group(1)) if non2xx else 0,
            "connections_per_worker": split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--logins", type=int, default=200, help="sequential logins for the latency part")
    parser.add_argument("--jira-latency-ms", type=float, default=10.0)
    parser.add_argument("--web-workers", default="2", help="gunicorn workers (AVATAR_SYNC_WEB_WORKERS)")
    parser.add_argument("--web-threads", default="2", help="threads per worker (AVATAR_SYNC_WEB_THREADS)")
    parser.add_argument("--skip-workers-on", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="only part 2, login -> avatar")
    parser.add_argument("--photo-kind", choices=photos.KINDS, default="portrait",
                        help="portrait: re-encodes like a real photo; quadrants: flat colour (earlier figures)")
    parser.add_argument("--photo-px", type=int, default=96,
                        help="side of each login's photo: 96 (a thumbnailPhoto) or 256+ (a jpegPhoto)")
    parser.add_argument("--wrk-threads", type=int, default=2,
                        help="wrk's own threads; on 2 cores each one takes CPU from gunicorn")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install -y wrk")

    work = Path(tempfile.mkdtemp(prefix="avatar-bench-"))
    ldap = slapd_rig.Slapd.running(work / "slapd")
    try:
        people = ldap.add_ou("people")
        state = JiraState(version="10.3.0")
        state.add_account("avatar-sync", "pw", admin=True)
        thumb = photos.of_kind(args.photo_kind, args.photo_px, args.photo_px)
        names = [f"lat{i}" for i in range(args.logins)]
        for name in names:
            ldap.add_user(people, name, thumbnail_photo=thumb)
            state.add_user(name)
        selected_at: dict[str, float] = {}
        results: dict[str, Any] = {"cores": os.cpu_count()}
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        with EmulatorServer(state) as jira:
            # -- 1. acknowledgement --------------------------------------------------------
            gunicorn_env = {"AVATAR_SYNC_LOG_LEVEL": "WARNING", "AVATAR_SYNC_WEB_WORKERS": args.web_workers,
                            "AVATAR_SYNC_WEB_THREADS": args.web_threads}
            results["gunicorn"] = {"workers": args.web_workers, "threads": args.web_threads,
                                   "wrk_connections": args.connections, "wrk_threads": args.wrk_threads}
            for workers_on in () if args.latency_only else (False,) if args.skip_workers_on else (False, True):
                db = work / f"ack-{workers_on}"
                db.mkdir()
                config = db / "config.toml"
                write_config(config, db, jira.url, ldap, people, workers_on)
                port = free_port()
                proc = start_gunicorn(config, port, db / "gunicorn.log", gunicorn_env)
                try:
                    bodies = db / "bodies.txt"
                    signed_bodies(bodies, 400_000, f"ack{int(workers_on)}-")
                    lua = db / "signed.lua"
                    lua.write_text(WRK_LUA % {"file": bodies})
                    wrk(port, lua, 3, args.connections, args.wrk_threads)  # warm-up
                    results[f"ack_workers_{'on' if workers_on else 'off'}"] = wrk(
                        port, lua, args.duration, args.connections, args.wrk_threads)
                finally:
                    proc.terminate()
                    proc.wait(30)

            # -- 2. login -> avatar selected -------------------------------------------------
            db = work / "latency"
            db.mkdir()
            config = db / "config.toml"
            write_config(config, db, jira.url, ldap, people, True)
            port = free_port()
            proc = start_gunicorn(config, port, db / "gunicorn.log", gunicorn_env)
            original_put = jira.app.view_functions["api.select"]

            def timed_select(*a, **kw):
                resp = original_put(*a, **kw)
                from flask import request as flask_request
                selected_at[flask_request.args["username"]] = time.perf_counter()
                return resp
            jira.app.view_functions["api.select"] = timed_select
            state.latency = args.jira_latency_ms / 1000
            session = requests.Session()
            latencies, overheads = [], []
            try:
                for name in names:
                    body = json.dumps({"webhookEvent": "user_login", "user": {"name": name}}).encode()
                    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                    started = time.perf_counter()
                    r = session.post(f"http://127.0.0.1:{port}/webhooks/jira", data=body,
                                     headers={"Content-Type": "application/json", "X-Hub-Signature": sig}, timeout=10)
                    assert r.status_code == 202, r.text
                    deadline = started + 10
                    while name not in selected_at and time.perf_counter() < deadline:
                        time.sleep(0.0005)
                    latencies.append((selected_at[name] - started) * 1000)
                    time.sleep(0.005)  # let the PUT's after_request book its time
                    overheads.append(latencies[-1] - state.user_seconds.get(name, 0.0) * 1000)
            finally:
                proc.terminate()
                proc.wait(30)
            latencies.sort()
            results["login_to_avatar"] = {
                "jira_latency_per_call_ms": args.jira_latency_ms, "jira_calls": 4,
                "p50_ms": round(statistics.median(latencies), 1),
                "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1], 1),
                "p50_above_added_latency_ms": round(statistics.median(latencies) - 4 * args.jira_latency_ms, 1),
                "p50_above_time_in_emulator_ms": round(statistics.median(overheads), 1)}
    finally:
        ldap.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
