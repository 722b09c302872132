"""The service as operators run it: a real gunicorn process (deploy/gunicorn.conf.py) on
loopback, real slapd, the Jira emulator. Deadlines here are generous upper bounds to keep
CI stable; the latency targets are measured by tests/bench/, not asserted."""
from __future__ import annotations

import bisect
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import ADMIN, SECRET, Service, add_users, synced, wait_until
from tests.rig.children import DIE_WITH_PARENT


@pytest.fixture
def service(gunicorn_service):
    return gunicorn_service


def test_signed_login_selects_the_avatar(service, slapd, ldap_ou, jira):
    add_users(slapd, ldap_ou, jira, ["jdoe"])
    started = time.monotonic()
    r = service.login("jdoe")
    assert r.status_code == 202 and r.json() == {"status": "queued", "user": "jdoe"}
    wait_until(lambda: synced(jira, "jdoe"), 10, "the avatar to be selected")
    print(f"login -> avatar selected in {(time.monotonic() - started) * 1000:.0f} ms")
    # the outcome is recorded just after Jira confirmed the select: a moment later
    wait_until(lambda: service.user("jdoe").json()["state"]["last_outcome"] == "updated", 10, "the outcome recorded")
    again = service.login("jdoe")
    assert again.status_code == 200 and again.json()["status"] == "debounced"


def test_fifty_concurrent_logins_make_one_upload(service, slapd, ldap_ou, jira):
    add_users(slapd, ldap_ou, jira, ["storm"])
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: service.login("storm").status_code, range(50)))
    assert set(statuses) <= {200, 202} and 202 in statuses
    wait_until(lambda: synced(jira, "storm"), 10, "the avatar to be selected")
    wait_until(lambda: service.user("storm").json()["queue"] is None, 10, "the queue to drain")
    assert jira.state.count("POST /user/avatar/temporary", "storm") == 1
    assert jira.state.count("POST /user/avatar", "storm") == 1


def test_bad_signature_is_refused_and_nothing_queued(service, slapd, ldap_ou, jira):
    add_users(slapd, ldap_ou, jira, ["jdoe"])
    assert service.login("jdoe", signature="sha256=" + "0" * 64).status_code == 401
    assert requests.post(service.url + "/webhooks/jira", json={"user": {"name": "jdoe"}}, timeout=5).status_code == 401
    time.sleep(0.5)
    assert service.user("jdoe").status_code == 404  # nothing known, nothing queued
    assert jira.state.writes() == 0


def test_metrics_add_up_every_gunicorn_worker(service, slapd, ldap_ou, jira):
    """Each worker counts its own requests; a scrape, whichever worker answers it, adds them all."""
    names = [f"m{i:02d}" for i in range(20)]
    add_users(slapd, ldap_ou, jira, names)
    with ThreadPoolExecutor(8) as pool:  # new connections: both workers take some
        assert set(pool.map(lambda n: service.login(n).status_code, names)) == {202}

    def scrape() -> tuple[str, float]:
        with requests.Session() as fresh:
            text = fresh.get(service.url + "/metrics", timeout=10).text
        updated = sum(float(v) for v in re.findall(
            r'^jira_avatar_sync_syncs_total\{outcome="updated",source="login"\} (\S+)$', text, re.M))
        return text, updated

    # a sync is counted just after Jira confirmed its select, so the emulator sees it a moment first
    wait_until(lambda: scrape()[1] == 20.0, 30, "every login's sync to be counted")
    for _ in range(12):
        text, updated = scrape()
        assert 'jira_avatar_sync_webhook_requests_total{status="queued"} 20.0' in text
        assert updated == 20.0
    assert 'jira_avatar_sync_build_info{version="' in text


def test_sigkill_after_accepting_loses_and_repeats_nothing(service, slapd, ldap_ou, jira):
    names = [f"k{i:03d}" for i in range(200)]
    add_users(slapd, ldap_ou, jira, names)
    jira.state.latency = 0.02  # so the kill lands while syncs are in flight
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda n: service.login(n).status_code, names))
    service.kill9()
    assert statuses == [202] * len(names)
    done_before = sum(synced(jira, n) for n in names)
    assert done_before < len(names), "the kill came too late to test anything"
    service.start()
    wait_until(lambda: all(synced(jira, n) for n in names), 90, "every accepted login to be synced")
    # a crop-confirm cut short by the kill (headers sent, body not) is refused, creating nothing
    created = {n: jira.state.created_for(n) for n in names}
    assert {n: c for n, c in created.items() if c != 1} == {}
    assert all(len(jira.state.custom_avatars(n)) == 1 for n in names)  # no orphans either
    print(f"{done_before} of {len(names)} synced before the kill; the rest after the restart")


def test_stopping_gunicorn_lets_go_of_the_sweep_its_api_started(service, slapd, ldap_ou, jira, tmp_path):
    """A sweep started through the admin API runs in the web worker that answered; when gunicorn
    stops (a deploy, a restart), that worker lets go of it, so that another process resumes it
    at once instead of after its lease."""
    from sqlalchemy import select

    from app.store import Store
    from app.sweep import sweeps
    from app.tables import utcnow
    names = [f"g{i:02d}" for i in range(60)]
    add_users(slapd, ldap_ou, jira, names)
    jira.state.latency = 0.2  # far from done when gunicorn stops
    r = service.http.post(service.url + "/admin/sweeps", json={}, headers={"Authorization": f"Bearer {ADMIN}"},
                          timeout=10)
    assert r.status_code == 202
    time.sleep(1)
    service.stop()
    store = Store(f"sqlite:///{tmp_path}/state.db")
    try:
        with store.read() as conn:
            row = conn.execute(select(sweeps.c.status, sweeps.c.lease_until).where(sweeps.c.id == r.json()["id"])).one()
    finally:
        store.dispose()
    assert row.status == "running", "the sweep ended before the stop: nothing tested"
    assert row.lease_until.replace(tzinfo=None) <= utcnow().replace(tzinfo=None)


def _api_sweep(svc: Service) -> int:
    r = svc.http.post(svc.url + "/admin/sweeps", json={}, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _sweep_summary(svc: Service, sweep_id: int) -> dict:
    return svc.http.get(f"{svc.url}/admin/sweeps/{sweep_id}", headers={"Authorization": f"Bearer {ADMIN}"},
                        timeout=10).json()


def _service_for_a_sweep(tmp_path, slapd, ldap_ou, jira, names: list[str], max_concurrency: int,
                         per_second: float = 0) -> Service:
    add_users(slapd, ldap_ou, jira, names)
    svc = Service(tmp_path, slapd, ldap_ou, jira.url, env={"AVATAR_SYNC_JIRA_MAX_CONCURRENCY": str(max_concurrency),
                                                           "AVATAR_SYNC_JIRA_MAX_REQUESTS_PER_SECOND": str(per_second)})
    svc.start()
    return svc


def _ended(svc: Service, sweep_id: int) -> dict:
    wait_until(lambda: _sweep_summary(svc, sweep_id)["status"] != "running", 60, "the sweep to end")
    return _sweep_summary(svc, sweep_id)


def _workers(svc: Service) -> list[int]:
    return [int(p) for p in Path(f"/proc/{svc.pid}/task/{svc.pid}/children").read_text().split()]


def test_the_workers_share_jira_max_concurrency_in_a_sweep(tmp_path, slapd, ldap_ou, jira):
    """The two workers take their Jira slots from one semaphore the master made: a sweep the
    API started keeps jira.max_concurrency calls in flight from both together, not twice that,
    though each worker grows to twice the slots' threads while the sweep's users wait."""
    names = [f"c{i:03d}" for i in range(150)]  # more than one worker's threads claim at once
    svc = _service_for_a_sweep(tmp_path, slapd, ldap_ou, jira, names, max_concurrency=3)
    try:
        jira.state.latency = 0.03
        summary = _ended(svc, _api_sweep(svc))
    finally:
        svc.stop()
    assert summary["status"] == "finished" and summary["counts"]["updated"] == 150, summary
    assert jira.state.peak("*") == 3, jira.state.peak_in_flight  # reached, never passed


def test_the_workers_share_jira_max_requests_per_second_in_a_sweep(tmp_path, slapd, ldap_ou, jira):
    """The two workers space their Jira calls on one clock the master made: through an API sweep
    Jira sees jira.max_requests_per_second calls a second, where each worker pacing alone would
    start twice that (40 in the busiest second)."""
    names = [f"p{i:02d}" for i in range(40)]
    svc = _service_for_a_sweep(tmp_path, slapd, ldap_ou, jira, names, max_concurrency=8, per_second=20)
    try:
        summary = _ended(svc, _api_sweep(svc))
    finally:
        svc.stop()
    assert summary["status"] == "finished" and summary["counts"]["updated"] == 40
    arrivals = jira.state.arrivals
    assert len(arrivals) > 100
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) <= 20 * 1.05
    # calls spaced at their start may still meet at Jira, after a wait for a slot or for the CPU
    busiest = max(bisect.bisect_left(arrivals, t + 1.0) - i for i, t in enumerate(arrivals))
    assert busiest <= 30, busiest


def test_a_reload_keeps_the_workers_jira_budget_unless_the_limits_changed(tmp_path, monkeypatch):
    """gunicorn's HUP starts new workers while the old ones finish: with the same Jira limits
    both take their slots from the one budget (a new one would let them have twice the slots
    between them); new limits make a new budget."""
    from types import SimpleNamespace

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))  # else importing the hooks sets one
    from app import gunicorn_conf
    from tests.rig.service_config import write_service_config

    def configure(max_concurrency: int, per_second: float) -> None:
        write_service_config(tmp_path / "service.toml", database_url=f"sqlite:///{tmp_path}/state.db",
                             jira={"url": "http://127.0.0.1:1", "username": "svc", "password": "pw",
                                   "max_concurrency": max_concurrency, "max_requests_per_second": per_second},
                             webhook={"secret": SECRET}, admin={"token": ADMIN},
                             directories=[{"name": "d", "urls": ["ldap://127.0.0.1:1"], "base_dn": "dc=x"}])
    monkeypatch.setenv("AVATAR_SYNC_CONFIG", str(tmp_path / "service.toml"))
    configure(4, 0)
    server = SimpleNamespace()
    gunicorn_conf.on_starting(server)
    first = server.avatar_sync_gate
    assert first is not None and first.limits == (4, False)
    gunicorn_conf.on_reload(server)
    assert server.avatar_sync_gate is first
    configure(4, 10)
    gunicorn_conf.on_reload(server)
    assert server.avatar_sync_gate is not first and server.avatar_sync_gate.limits == (4, True)
    configure(6, 10)
    second = server.avatar_sync_gate
    gunicorn_conf.on_reload(server)
    assert server.avatar_sync_gate is not second and server.avatar_sync_gate.free() == 6


def test_a_killed_workers_jira_slots_come_back_to_the_workers_after_it(tmp_path, slapd, ldap_ou, jira):
    """Both workers killed (SIGKILL) while they hold every Jira slot: the master gives the slots
    they held back, so the workers it starts instead can call Jira and finish the sweep (their
    calls would otherwise wait for slots nobody will ever give back)."""
    svc = _service_for_a_sweep(tmp_path, slapd, ldap_ou, jira, [f"d{i:02d}" for i in range(30)], max_concurrency=2)
    try:
        jira.state.latency = 1.0
        sweep_id = _api_sweep(svc)
        wait_until(lambda: sum(jira.state.in_flight.values()) == 2, 20, "both slots in use")
        killed = _workers(svc)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        jira.state.latency = 0.01
        wait_until(lambda: len(set(_workers(svc)) - set(killed)) == 2, 30, "two new workers")
        summary = _ended(svc, sweep_id)
        log = svc.log.read_text()
    finally:
        svc.stop()
    assert summary["status"] == "finished" and summary["counts"]["updated"] == 30
    assert re.search(r"exited holding [12] Jira call slots: given back", log), log[-3000:]


def test_jira_answering_503_for_30_seconds(service, slapd, ldap_ou, jira):
    names = [f"o{i:02d}" for i in range(20)]
    add_users(slapd, ldap_ou, jira, names)
    jira.state.inject(503, path="/rest/", seconds=30, retry_after=1)
    started = time.monotonic()
    assert all(service.login(n).status_code == 202 for n in names)
    time.sleep(2)
    failed = service.user(names[0]).json()
    assert failed["queue"]["attempts"] >= 1 and "503" in failed["queue"]["last_error"]
    wait_until(lambda: all(synced(jira, n) for n in names), 90, "every login to land after the outage")
    assert time.monotonic() - started >= 29
    assert all(jira.state.count("POST /user/avatar", n) == 1 for n in names)


def test_serve_and_a_separate_worker_process(tmp_path, slapd, ldap_ou, jira):
    """`jira-avatar-sync serve` runs gunicorn; with start_in_web off, `worker` drains the queue."""
    svc = Service(tmp_path, slapd, ldap_ou, jira.url)
    svc.config.write_text(svc.config.read_text().replace("threads = 4", "threads = 2\nstart_in_web = false"))
    add_users(slapd, ldap_ou, jira, ["sep"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    env["AVATAR_SYNC_CONFIG"] = str(svc.config)
    script = str(Path(sys.executable).parent / "jira-avatar-sync")
    web = subprocess.Popen([*DIE_WITH_PARENT, script, "serve", "--bind", f"127.0.0.1:{svc.port}"], env=env,
                           cwd=tmp_path, stdout=open(svc.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    svc.proc = web
    worker = None
    try:
        wait_until(lambda: _up(svc.url), 30, "serve to answer /healthz")
        assert svc.login("sep").status_code == 202
        time.sleep(1)
        assert not synced(jira, "sep")  # no worker threads in the web process
        worker = subprocess.Popen([*DIE_WITH_PARENT, script, "worker"], env=env, cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: synced(jira, "sep"), 20, "the worker process to sync")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        if worker and worker.poll() is None:
            worker.kill()
        svc.stop()


def _up(url) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=1).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def test_serve_refuses_to_start_without_a_webhook_secret(tmp_path, slapd, ldap_ou, jira):
    svc = Service(tmp_path, slapd, ldap_ou, jira.url)
    svc.config.write_text(svc.config.read_text().replace(f'secret = "{SECRET}"', ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    env["AVATAR_SYNC_CONFIG"] = str(svc.config)
    result = subprocess.run([str(Path(sys.executable).parent / "jira-avatar-sync"), "serve"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "webhook.secret: is required" in result.stderr


def test_no_control_socket_unless_an_admin_names_one(tmp_path, slapd, ldap_ou, jira):
    """gunicorn 25 and later open one for gunicornc in $HOME/.gunicorn by default: for the
    service user, its state directory, one path for every instance of that user on a host."""
    import stat

    home, named = tmp_path / "home", tmp_path / "run" / "gunicorn.ctl"
    home.mkdir()
    quiet = Service(tmp_path, slapd, ldap_ou, jira.url, name="quiet-", env={"HOME": str(home), "XDG_RUNTIME_DIR": ""})
    asked = Service(tmp_path, slapd, ldap_ou, jira.url, name="asked-",
                    env={"HOME": str(home), "AVATAR_SYNC_GUNICORN_CONTROL_SOCKET": str(named)})
    for svc in (quiet, asked):
        svc.start()
    try:
        wait_until(named.exists, 10, "the named control socket")
        assert stat.S_ISSOCK(named.stat().st_mode) and stat.S_IMODE(named.stat().st_mode) == 0o600
        assert list(home.iterdir()) == []  # nothing in the home directory
    finally:
        for svc in (quiet, asked):
            svc.stop()
