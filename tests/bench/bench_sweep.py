"""Benchmark: a full sweep of N users with photos against the emulator.

    .venv/bin/python -m tests.bench.bench_sweep [--users 10000] [--latency-ms 10] [--concurrency 8]
                                                [--jira-version 9.12.0|10.0.0|11.0.0]

--processes N is passed to the sweep command (default: its own, one process per core, sharing
jira.max_concurrency).

--jira-version picks the emulated Jira: 11.0.0 (and 10.3) list users with /user/list; 9.12.0
and 10.0.0 have no /user/list, so the sweep reads the members of the application groups.

BENCH_EXTRA_WORKERS=N also runs N `jira-avatar-sync worker` processes beside it (replicas'
queue workers, as far as a sweep is concerned), C split between all processes (on SQLite
jira.max_concurrency is per process); with --database postgres the processes share C through
the cluster-wide budget (jira.limits_scope = "cluster") instead. BENCH_THREADS=N sets
worker.threads (the sweep process itself runs at least twice its share of C; Jira calls in
flight stay at C).

The emulator (this process) adds ``latency`` to every Jira call; the sweep runs as the real
CLI, ``jira-avatar-sync sweep``, in its own process with jira.max_concurrency = C. Reported:
first sweep time against the round-trip bound 3*N*L/C (three Jira calls per new avatar), the
repeat sweep's time, Jira writes and photo reads, the sweep process's peak RSS, and the mean
number of Jira calls in flight during the first sweep as the emulator sees them (C would mean
no slot was ever idle; each call's own 10 ms is in it, the client's work around it is not).

--dashboard-every S polls the dashboard's data (GET /admin/dashboard.json, as the open page
does every 3 s) every S seconds during the first sweep, from this process, and reports how long
each refresh took: what the page costs the database while a sweep writes to it. Compare the
first sweep's time with and without it.

--separate-cores keeps the emulator (this process) and slapd on the first core and runs the sweep
(or the rig's client) on the others: Jira and the directory on hardware of their own, as in
production, where the default shares every core between all three. Compare with the rig alone
under the same option.

--jira-only measures what the rig alone allows: C threads of another process make the same
three calls per user through the service's own Jira client (upload, crop-confirm, select),
with no directory, database or decoding. The emulator shares the cores, so even this stays
above the bound. A sweep run measures the rig too, just before and just after its first sweep
(`rig_alone_s`), and reports `first_over_rig`: what the service costs over this machine's floor
of that moment, which a figure against the bound alone cannot tell from the machine's drift.
--no-rig skips it (and --no-photos, which uploads nothing, never has it).

--photos-from http serves the photos from a photo server in this process ([http_photos],
first in the chain; slapd holds none), as a company's HR system would: a photo server's changes
move no directory marker, so every sweep asks it about every user (the repeat sweep, one 304
each), and the repeat sweep queues each user instead of settling them from their markers.
Its floor is measured just before the repeat sweep (`photo_rig_alone_s`): one conditional HEAD
per user through the service's own HTTP client, as many at a time as a sweep asks, in a
process of its own, with no directory, Jira or database.

--via-api starts each sweep with POST /admin/sweeps on the service under gunicorn (two workers,
deploy/gunicorn.conf.py, sharing the master's C slots, worker.threads = BENCH_THREADS or the
service's default 2), already up as in production, and follows it with GET /admin/sweeps/<id>: what the
dashboard's Start button and the nightly schedule get, where the command line brings its own
processes and threads.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from tests import photos
from tests.helpers import pg_schema
from tests.jira_emulator import EmulatorServer, JiraState
from tests.rig import slapd as slapd_rig
from tests.rig.photo_server import PhotoServer
from tests.rig.service_config import slapd_section, write_service_config

ROOT = Path(__file__).resolve().parents[2]
BENCH_ADMIN = "bench-admin-token-0123456789"
BENCH_WEBHOOK_SECRET = "bench-webhook-secret-0123"


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of this process (the emulator) or of another one (slapd)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def separate_cores(*server_pids: int) -> set[int]:
    """--separate-cores: this process (the emulator) and ``server_pids`` keep the first core;
    the others, returned, are for the service."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--separate-cores needs two cores or more")
    for pid in (0, *server_pids):
        os.sched_setaffinity(pid, cpus[:1])
    return set(cpus[1:])


def write_config(work: Path, database_url: str, jira_url: str, ldap, base_dn: str, concurrency: int,
                 threads: int, limits_scope: str = "process", photo_url: str | None = None) -> Path:
    """The service's config for a bench run: the emulator, slapd, C Jira calls, ``threads``;
    ``photo_url``: a photo server first in the chain."""
    return write_service_config(
        work / "config.toml", database_url=database_url,
        jira={"url": jira_url, "username": "avatar-sync", "password": "pw", "max_concurrency": concurrency,
              "limits_scope": limits_scope},
        webhook={"secret": BENCH_WEBHOOK_SECRET}, admin={"token": BENCH_ADMIN},
        worker={"threads": threads, "poll_seconds": 0.2}, directories=[slapd_section(ldap.url, base_dn)],
        **({"http_photos": {"url": photo_url, "position": "first"}} if photo_url else {}))


def run_sweep(config: Path, *args: str, slapd_pid: int | None = None,
              cores: set[int] | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and output of one `jira-avatar-sync sweep` process (on
    ``cores`` if given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    env["AVATAR_SYNC_CONFIG"] = str(config)
    script = str(Path(sys.executable).parent / "jira-avatar-sync")
    prefix = os.environ.get("BENCH_PROFILE_PREFIX", "").split()
    wrapper = [sys.executable, "-c", (
        "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
        "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print('CPU_S', r.ru_utime + r.ru_stime, file=sys.stderr); "
        "print('PEAK_RSS_KB', r.ru_maxrss, file=sys.stderr); "
        "sys.exit(rc)"), *prefix, script, "--log-level", "WARNING", "sweep", *args]
    def on_cores():
        if cores:
            os.sched_setaffinity(0, cores)
    helpers = [subprocess.Popen([script, "--log-level", "WARNING", "worker"], env=env, preexec_fn=on_cores)
               for _ in range(int(os.environ.get("BENCH_EXTRA_WORKERS", "0")))]
    started, emulator_cpu, slapd_cpu = time.perf_counter(), cpu_seconds(), cpu_seconds(slapd_pid)
    out = subprocess.run(wrapper, env=env, capture_output=True, text=True, preexec_fn=on_cores)
    seconds = time.perf_counter() - started
    helpers_cpu = sum(cpu_seconds(helper.pid) for helper in helpers)  # read before they exit
    for helper in helpers:
        helper.terminate()
        helper.wait(30)
    rss = int(out.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    print(f"sweep process: {seconds:.1f}s wall, {float(out.stderr.rsplit('CPU_S', 1)[1].split()[0]):.1f}s CPU, "
          f"peak RSS {rss / 1024:.0f} MB; meanwhile the emulator used {cpu_seconds() - emulator_cpu:.1f}s CPU "
          f"and slapd {cpu_seconds(slapd_pid) - slapd_cpu:.1f}s"
          + (f", the extra workers {helpers_cpu:.1f}s" if helpers else ""), file=sys.stderr)
    if out.returncode != 0:
        raise SystemExit(out.stdout + out.stderr[-3000:])
    return seconds, rss, out.stdout


def api_sweep(config: Path, gunicorn_workers: int, logins=None) -> tuple[float, int, str]:
    """--via-api: one sweep started with POST /admin/sweeps on the service under gunicorn
    (deploy/gunicorn.conf.py), already up as in production, followed until it ends; wall
    seconds from the POST, the workers' largest peak RSS (KiB) and the summary. ``logins``:
    (state, names, every) for LoginsDuringSweep, whose summary is printed."""
    import requests

    from tests.rig.ports import free_port
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    env.update(AVATAR_SYNC_CONFIG=str(config), AVATAR_SYNC_LOG_LEVEL="WARNING")
    url = f"http://127.0.0.1:{free_port()}"
    log = config.with_suffix(".gunicorn.log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "--bind", url[7:],
         "--workers", str(gunicorn_workers), "app:create_app()"],
        cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    admin = {"Authorization": f"Bearer {BENCH_ADMIN}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the service did not come up:\n" + log.read_text()[-3000:])
            time.sleep(0.1)
        time.sleep(1)  # every worker's pool up
        pids = [proc.pid, *map(int, Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())]
        cpu = sum(cpu_seconds(pid) for pid in pids)
        started = time.perf_counter()
        r = requests.post(url + "/admin/sweeps", json={"dry_run": False}, headers=admin, timeout=10)
        assert r.status_code == 202, r.text
        with ExitStack() as during:
            in_sweep = during.enter_context(LoginsDuringSweep(url, *logins)) if logins else None
            while True:
                summary = requests.get(f"{url}/admin/sweeps/{r.json()['id']}", headers=admin, timeout=10).json()
                if summary["status"] != "running":
                    break
                time.sleep(0.05)
        seconds = time.perf_counter() - started
        if in_sweep:
            print(f"logins during the sweep: {json.dumps(in_sweep.summary())}", file=sys.stderr)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
        rss = max(int(line.split()[1]) for pid in pids[1:]
                  for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    print(f"sweep via the API: {seconds:.1f}s wall, {cpu:.1f}s CPU in gunicorn's {len(pids)} processes, "
          f"largest peak RSS {rss / 1024:.0f} MB", file=sys.stderr)
    if summary["status"] != "finished":
        raise SystemExit(json.dumps(summary, indent=2)[:3000])
    counts = "\n".join(f"{k} {v}" for k, v in summary["counts"].items())
    return seconds, rss, f"sweep {summary['id']}: {summary['status']}\n{counts}\ntotal {summary['total']}"


class _Every:
    """Calls tick() every ``every`` seconds on a thread of its own, from __enter__ to __exit__."""

    def __init__(self, every: float):
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class DashboardPoller(_Every):
    """GET /admin/dashboard.json every ``every`` seconds, as an open dashboard does."""

    def __init__(self, config: Path, every: float):
        from app import create_app
        from app.config import load_settings
        super().__init__(every)
        self.app = create_app(load_settings(config, env={}))
        self.client = self.app.test_client()
        self.seconds: list[float] = []

    def tick(self) -> None:
        started = time.perf_counter()
        r = self.client.get("/admin/dashboard.json", headers={"Authorization": "Bearer " + BENCH_ADMIN})
        assert r.status_code == 200, r.get_data(as_text=True)
        self.seconds.append(time.perf_counter() - started)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.app.extensions["avatar_sync"].close()

    def summary(self) -> dict:
        ms = sorted(s * 1000 for s in self.seconds)
        if not ms:
            return {"refreshes": 0}
        return {"refreshes": len(ms), "every_s": self.every, "p50_ms": round(ms[len(ms) // 2], 1),
                "max_ms": round(ms[-1], 1)}


class InFlight(_Every):
    """The emulator's Jira calls in flight, sampled every 5 ms: their mean over a sweep says
    whether the sweep kept its C slots busy (C) or left them idle between calls."""

    def __init__(self, state: JiraState):
        super().__init__(0.005)
        self.state = state
        self.samples: list[int] = []
        self.times: list[float] = []

    def tick(self) -> None:
        with self.state.lock:
            self.samples.append(sum(self.state.in_flight.values()))
        self.times.append(time.perf_counter())

    def mean(self) -> float:
        return round(sum(self.samples) / len(self.samples), 2) if self.samples else 0.0

    def timeline(self, started: float, ended: float, full: int) -> dict:
        """Seconds from the command's start to its first Jira call in flight and to ``full``
        calls in flight, and from its last call in flight to the command's exit."""
        busy = [t for t, n in zip(self.times, self.samples) if n]
        first_full = next((t for t, n in zip(self.times, self.samples) if n >= full), None)
        if not busy:
            return {}
        return {"to_first_call_s": round(busy[0] - started, 2),
                "to_all_slots_busy_s": round(first_full - started, 2) if first_full else None,
                "last_call_to_exit_s": round(ended - busy[-1], 2)}


class LoginsDuringSweep(_Every):
    """--logins-every S: during a sweep, one signed user_login webhook every S seconds for a user
    the sweep has not reached yet (from the end of ``names``), and the time from the webhook to
    the user's new avatar selected in the emulator: what a login costs while a sweep runs."""

    def __init__(self, url: str, state: JiraState, names: list[str], every: float):
        super().__init__(every)
        self.url, self.state, self.names = url, state, list(names)
        self.ms: list[float] = []

    def tick(self) -> None:
        import requests

        from tests.helpers import signed
        name = self.names.pop()
        if self.state.selected_avatar(name).owner is not None:
            return  # the sweep got there first
        body = json.dumps({"webhookEvent": "user_login", "user": {"name": name}}).encode()
        started = time.perf_counter()
        r = requests.post(self.url + "/webhooks/jira", data=body, headers=signed(body, BENCH_WEBHOOK_SECRET),
                          timeout=10)
        assert r.status_code == 202, r.text
        while self.state.selected_avatar(name).owner is None and time.perf_counter() - started < 30:
            time.sleep(0.002)
        self.ms.append((time.perf_counter() - started) * 1000)

    def summary(self) -> dict:
        ms = sorted(self.ms)
        if not ms:
            return {"logins": 0}
        return {"logins": len(ms), "p50_ms": round(ms[len(ms) // 2], 1), "max_ms": round(ms[-1], 1)}


def jira_only(url: str, users: int, concurrency: int, png: bytes, cores: set[int] | None) -> tuple[float, float]:
    """Wall and CPU seconds of the three avatar calls for every user, C at a time (run in a
    process of its own, as the sweep is, on ``cores`` if given)."""
    from concurrent.futures import ThreadPoolExecutor

    from app.config import JiraSettings
    from app.images import png_size
    from app.jira import JiraClient
    client = JiraClient(JiraSettings(url=url, username="avatar-sync", password="pw", max_concurrency=concurrency))

    side = png_size(png)[0]
    if cores:
        os.sched_setaffinity(0, cores)

    def one(i: int) -> None:
        name = f"user{i:06d}"
        client.select_avatar(name, client.upload_avatar(name, png, side))
    started, cpu = time.perf_counter(), cpu_seconds()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(users)))
    return time.perf_counter() - started, cpu_seconds() - cpu


def photo_checks_only(url: str, users: int, etag: str) -> tuple[float, float]:
    """Wall and CPU seconds of one conditional HEAD per user (each answered 304) through the
    service's own HTTP client, CHECKS_AT_ONCE at a time as a sweep asks them (run in a process
    of its own, as the sweep's runner is)."""
    from concurrent.futures import ThreadPoolExecutor

    from app.config import HttpPhotoSettings
    from app.http_photos import CHECKS_AT_ONCE
    from app.jira_http import JiraHttp
    http = JiraHttp(HttpPhotoSettings(url=url), name="the photo server")

    def one(i: int) -> None:
        resp = http.request("HEAD", url.replace("{username}", f"user{i:06d}"),
                            headers={"Accept": "image/*", "If-None-Match": etag})
        assert resp.status == 304, resp.status
    started, cpu = time.perf_counter(), cpu_seconds()
    with ThreadPoolExecutor(CHECKS_AT_ONCE) as pool:
        list(pool.map(one, range(users)))
    return time.perf_counter() - started, cpu_seconds() - cpu


def answers_by_kind(photo_server: PhotoServer) -> dict[str, int]:
    """The photo server's answers so far, by method and status ("HEAD 304": n)."""
    return dict(Counter(f"{method} {status}" for _, status, method in photo_server.seen.elements()))


def measure_photo_rig(photo_server: PhotoServer, users: int) -> dict:
    """The floor of a repeat sweep whose photos come from the photo server: its checks alone."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    etag = photo_server.answer("user000000", {})[2]["ETag"]
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as client:
        server_cpu = cpu_seconds()
        seconds, client_cpu = client.submit(photo_checks_only, photo_server.url, users, etag).result()
        server_cpu = cpu_seconds() - server_cpu
    photo_server.seen.clear()
    return {"seconds": round(seconds, 1), "client_cpu_s": round(client_cpu, 1), "server_cpu_s": round(server_cpu, 1)}


def measure_rig(args, cores: set[int] | None) -> dict:
    """The rig alone (what --jira-only prints): the three avatar calls per user from a bare
    client, against an emulator of its own with the same latency, C and photo."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from app.images import normalize
    state = JiraState(version="11.0.0", latency=args.latency_ms / 1000)
    state.add_account("avatar-sync", "pw", admin=True)
    for i in range(args.users):
        state.add_user(f"user{i:06d}")
    png = normalize(photos.of_kind(args.photo_kind, args.photo_px, args.photo_px))  # as the sweep sends it
    with EmulatorServer(state) as jira, ProcessPoolExecutor(1, mp_context=get_context("spawn")) as client:
        emulator_cpu = cpu_seconds()
        seconds, client_cpu = client.submit(jira_only, jira.url, args.users, args.concurrency, png, cores).result()
        emulator_cpu = cpu_seconds() - emulator_cpu
    return {"seconds": seconds, "client_cpu_s": round(client_cpu, 1), "emulator_cpu_s": round(emulator_cpu, 1),
            "avatars_created": sum(state.created_for(f"user{i:06d}") for i in range(args.users))}


def run_jira_only(args) -> None:
    rig = measure_rig(args, separate_cores() if args.separate_cores else None)
    bound = 3 * args.users * (args.latency_ms / 1000) / args.concurrency
    seconds = rig.pop("seconds")
    print(json.dumps({"users": args.users, "latency_ms": args.latency_ms, "concurrency": args.concurrency,
                      "separate_cores": args.separate_cores,
                      "bound_3NL_over_C_s": round(bound, 1), "jira_only_s": round(seconds, 1),
                      "jira_only_over_bound": round(seconds / bound, 2) if bound else None, **rig},
                     indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--photo-px", type=int, default=96, help="side of the seeded JPEG photos")
    parser.add_argument("--photo-kind", choices=photos.KINDS, default="portrait",
                        help="portrait: re-encodes like a real photo; quadrants: flat colour (the figures "
                             "before 2026-12-03)")
    parser.add_argument("--no-photos", action="store_true",
                        help="users without photos: every user is still paged, queued, looked up and "
                             "reported (memory as in a real sweep), but nothing is uploaded; for RSS at 100k")
    parser.add_argument("--jira-version", default="11.0.0", help="the emulated Jira: 9.12.0, 10.0.0, 11.0.0")
    parser.add_argument("--dashboard-every", type=float, default=0.0,
                        help="poll the dashboard's data every S seconds during the first sweep (0: off)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                        help="postgres: a fresh schema in the machine's PostgreSQL, limits_scope = cluster")
    parser.add_argument("--processes", type=int,
                        help="the sweep command's --processes (default: its own, one per core)")
    parser.add_argument("--separate-cores", action="store_true",
                        help="the emulator and slapd on the first core, the service (or the rig) on the others")
    parser.add_argument("--jira-only", action="store_true",
                        help="only the three Jira calls per user through the service's client: the rig's own floor")
    parser.add_argument("--no-rig", action="store_true",
                        help="skip the rig alone (--jira-only) that otherwise runs just before and just after "
                             "the first sweep")
    parser.add_argument("--via-api", action="store_true",
                        help="start each sweep with POST /admin/sweeps on the service under gunicorn (2 workers "
                             "sharing C, worker.threads as configured: BENCH_THREADS, default the service's 2) "
                             "instead of the command line")
    parser.add_argument("--photos-from", choices=["ldap", "http"], default="ldap",
                        help="http: the photos on a photo server ([http_photos], first in the chain), none in "
                             "slapd; every sweep asks the server about every user")
    parser.add_argument("--logins-every", type=float, default=0.0,
                        help="with --via-api: a login every S seconds during the first sweep, for a user it has not "
                             "reached yet, timed to the avatar selected (0: none)")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if args.jira_only:
        return run_jira_only(args)

    work = Path(tempfile.mkdtemp(prefix="avatar-sweep-bench-"))
    ldap = slapd_rig.Slapd.running(work / "slapd")
    try:
        people = ldap.add_ou("people")
        names = [f"user{i:06d}" for i in range(args.users)]
        t = time.perf_counter()
        photo = None if args.no_photos else photos.of_kind(args.photo_kind, args.photo_px, args.photo_px)
        from_http = args.photos_from == "http"
        ldap.add_users(people, [(n, None if from_http else photo) for n in names])
        state = JiraState(version=args.jira_version)
        state.add_account("avatar-sync", "pw", admin=True)
        for n in names:
            state.add_user(n)
        print(f"seeded {args.users} users in {time.perf_counter() - t:.0f}s", file=sys.stderr)

        photo_server = PhotoServer()
        if from_http and photo is not None:
            photo_server.photos = dict.fromkeys(names, photo)
        with EmulatorServer(state) as jira, ExitStack() as held:
            if from_http:
                held.enter_context(photo_server)
            # C calls in flight in all: split between the sweep and any extra worker processes
            # (under gunicorn, --via-api, the two workers share the master's C slots)
            processes = 1 + int(os.environ.get("BENCH_EXTRA_WORKERS", "0"))
            # on PostgreSQL the processes share C (limits_scope = cluster) unless BENCH_LIMITS_SCOPE=process
            cluster = args.database == "postgres" and os.environ.get("BENCH_LIMITS_SCOPE", "cluster") == "cluster"
            per_process = args.concurrency if cluster else max(1, args.concurrency // processes)
            database_url = (held.enter_context(pg_schema("avbench")) if args.database == "postgres"
                            else f"sqlite:///{work}/state.db")
            threads = int(os.environ.get("BENCH_THREADS", 2 if args.via_api else per_process))
            scope = "cluster" if cluster else "process"
            config = write_config(work, database_url, jira.url, ldap, people, per_process, threads, scope,
                                  photo_server.url if from_http else None)
            state.latency = args.latency_ms / 1000
            sweep_args = ("--processes", str(args.processes)) if args.processes else ()
            cores = separate_cores(ldap.pid) if args.separate_cores else None
            # the rig alone, right before and right after the first sweep: the machine's floor in
            # this very run (it drifts by 10-20 % within an hour on these machines)
            rig_s = [] if args.no_rig or args.no_photos else [measure_rig(args, cores)["seconds"]]
            with InFlight(state) as in_flight, ExitStack() as polled:
                poller = (polled.enter_context(DashboardPoller(config, args.dashboard_every))
                          if args.dashboard_every else None)
                sweep_started = time.perf_counter()
                logins = (state, names, args.logins_every) if args.logins_every else None
                first_s, first_rss, first_out = (api_sweep(config, 2, logins) if args.via_api else
                                                 run_sweep(config, *sweep_args, slapd_pid=ldap.pid, cores=cores))
                timeline = in_flight.timeline(sweep_started, sweep_started + first_s, per_process * processes)
            dashboard = poller.summary() if poller else None
            if rig_s:
                rig_s.append(measure_rig(args, cores)["seconds"])
            writes_after_first = state.writes()
            photo_answers_first = answers_by_kind(photo_server)
            photo_server.seen.clear()
            photo_rig = (measure_photo_rig(photo_server, args.users)
                         if from_http and photo is not None and not args.no_rig else None)
            uploads = state.count("POST /user/avatar/temporary")
            repeat_s, repeat_rss, repeat_out = (api_sweep(config, 2) if args.via_api else
                                                run_sweep(config, *sweep_args, slapd_pid=ldap.pid, cores=cores))
            bound = 3 * args.users * (args.latency_ms / 1000) / args.concurrency
            result = {
                "database": args.database, "extra_worker_processes": processes - 1,
                "sweep_processes": ("2 gunicorn workers (--via-api)" if args.via_api
                                    else args.processes or "one per core"),
                "worker_threads": threads,
                "separate_cores": args.separate_cores,
                "jira_version": args.jira_version, "users": args.users, "latency_ms": args.latency_ms,
                "concurrency": args.concurrency,
                "bound_3NL_over_C_s": round(bound, 1),
                "first_sweep_s": round(first_s, 1), "first_over_bound": round(first_s / bound, 2) if bound else None,
                "rig_alone_s": [round(r, 1) for r in rig_s],
                "first_over_rig": round(first_s / (sum(rig_s) / len(rig_s)), 3) if rig_s else None,
                "first_uploads": uploads, "first_peak_rss_mb": round(first_rss / 1024),
                "repeat_sweep_s": round(repeat_s, 1), "repeat_writes": state.writes() - writes_after_first,
                "repeat_peak_rss_mb": round(repeat_rss / 1024),
                "photos_from": args.photos_from,
                # the photo server's answers: "GET 200" each user once, then "HEAD 304" each
                **({"photo_server_first": photo_answers_first,
                    "photo_server_repeat": answers_by_kind(photo_server)}
                   if from_http else {}),
                **({"photo_rig_alone": photo_rig,
                    "repeat_over_photo_rig": round(repeat_s / photo_rig["seconds"], 2)} if photo_rig else {}),
                "dashboard_during_first": dashboard,
                "peak_jira_calls_in_flight": state.peak("*"),  # never above --concurrency
                # over the whole first sweep (start-up and tail included); --concurrency at best
                "mean_jira_calls_in_flight": in_flight.mean(),
                "first_sweep_timeline": timeline,  # its start-up and its tail, which the rig has not
                "first_summary": first_out.splitlines()[:8], "repeat_summary": repeat_out.splitlines()[:6],
            }
    finally:
        ldap.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
