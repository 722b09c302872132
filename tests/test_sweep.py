"""Full sweep over real slapd (more than two pages through a size-limited service account),
real Samba AD and the emulator in its 9.x and 10.x behaviours."""
from __future__ import annotations

import dataclasses
import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from app import job_run, sweep_run
from app.directory import Directory
from app.queue import LOGIN, SWEEP
from app.rules import UNKNOWN
from app.sweep import SweepConflict
from app.sweep import sweeps as sweeps_table
from app.worker import WorkerPool, sweep_threads
from tests import photos
from tests.helpers import JIRA_USER, make_settings, run_sweep, samba_directory, slapd_directory, wait_until

N_USERS = 1100  # > 2 pages of 500; the service account may see only 5 entries unpaged


@pytest.fixture
def lookups(monkeypatch):
    """Counts photo reads: the users Directory.lookup and lookup_many (a worker's batch) were
    asked for; both transfer the photo."""
    seen = []
    real, real_many = Directory.lookup, Directory.lookup_many

    def counting(self, username):
        seen.append(username)
        return real(self, username)

    def counting_many(self, usernames):
        found, absent = real_many(self, usernames)
        seen.extend(found)
        return found, absent
    monkeypatch.setattr(Directory, "lookup", counting)
    monkeypatch.setattr(Directory, "lookup_many", counting_many)
    return seen


class Rig:
    def __init__(self, services, jira):
        self.services, self.jira, self.state = services, jira, jira.state
        self.sweeps = services.sweeps

    def sweep(self, **kw) -> dict:
        return run_sweep(self.services, threads=4, **kw)


def build(tmp_path, jira, directories, services_for, **extra):
    settings = make_settings(tmp_path, jira.url, directories, **extra)
    return Rig(services_for(settings), jira)


# How a sweep reads Jira's users, per version (app/jira_users.py): id -> (version, the account
# may read application roles, the call that lists them in bulk)
SHAPES = {"9.12-groups": ("9.12.0", True, "GET /group/member"),
          "10.0-search": ("10.0.0", False, "GET /user/search"),
          "11-list": ("11.0.0", True, "GET /user/list")}


@pytest.fixture(params=["11-list"])
def shape(request, jira):
    version, roles_readable, bulk_call = SHAPES[request.param]
    jira.state.version, jira.state.roles_forbidden = version, not roles_readable
    return bulk_call


every_shape = pytest.mark.parametrize("shape", list(SHAPES), indirect=True)


@pytest.fixture
def big(tmp_path, slapd, ldap_ou, jira, services_for, shape):
    thumb = photos.photo(64, 48)
    users = [(f"u{i:04d}", None if i % 10 == 0 else thumb) for i in range(N_USERS)]
    slapd.add_users(ldap_ou, users)
    for name, _ in users[:-5]:  # the last five are in the directory only
        jira.state.add_user(name)
    for name in ("jira-only-1", "jira-only-2"):
        jira.state.add_user(name)
    jira.state.add_account("svc-jira-extra", "x")
    return build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)


@every_shape
def test_first_sweep_pages_everything_and_reports_each_user(big, shape):
    summary = big.sweep()
    assert big.state.count(shape) >= 1  # the version's bulk read
    assert summary["status"] == "finished" and summary["done"] == summary["total"]
    with_photo = N_USERS - N_USERS // 10
    counts = summary["counts"]
    assert counts["updated"] == with_photo - 5  # u1095..u1099 are not in Jira
    assert counts["not_in_jira"] == 5
    assert counts["no_photo"] == N_USERS // 10
    assert counts["not_in_directory"] >= 2  # jira-only users (and the service accounts)
    assert big.state.selected_avatar("u0001").owner is not None
    problems = big.sweeps.problems(summary["id"])
    assert {p["username"]: p["outcome"] for p in problems}["u0000"] == "no_photo"
    assert {p["outcome"] for p in problems} == {"no_photo", "not_in_jira", "not_in_directory"}


def test_a_failed_bulk_read_fails_the_sweep_before_any_user_is_reported_or_queued(big):
    """Jira's users are read while the directory's first pages come in: those pages wait for
    the read, and when it fails, nothing was reported or queued and no reader thread is left."""
    big.state.inject(400, "/rest/api/2/user/list")
    summary = big.sweep()
    assert summary["status"] == "failed" and "400" in summary["error"]
    assert summary["total"] == 0 and big.services.queue.job_for("u0001") is None
    assert big.state.writes() == 0
    assert not [t.name for t in threading.enumerate() if "jira-read" in t.name]


@every_shape
def test_repeat_sweep_makes_no_writes_and_reads_no_photo(big, lookups):
    big.sweep()
    writes, user_reads, lookups[:] = big.state.writes(), big.state.count("GET /user"), []
    summary = big.sweep()
    assert summary["status"] == "finished" and big.state.writes() == writes
    assert lookups == []  # nothing changed: no photo transferred
    assert summary["counts"]["unchanged"] == N_USERS - N_USERS // 10 - 5 and "updated" not in summary["counts"]
    # read in bulk, not user by user: only the five Jira does not have are asked for again
    assert big.state.count("GET /user") - user_reads <= 5


def test_incremental_sweep_reads_only_changed_entries_and_full_reads_all(big, slapd, ldap_ou, lookups):
    big.sweep()
    slapd.set_photo(f"uid=u0001,{ldap_ou}", "jpegPhoto", photos.solid(photos.BLUE, 64))
    big.state.upload_as_user("u0002", photos.solid(photos.GREEN, 48, fmt="PNG"))
    lookups[:] = []
    summary = big.sweep()
    assert sorted(lookups) == ["u0001", "u0002"]
    assert summary["counts"]["updated"] == 1 and summary["counts"]["restored"] == 1
    assert photos.close(photos.dominant(big.state.selected_avatar("u0001").png), photos.BLUE)
    writes, lookups[:] = big.state.writes(), []
    full = big.sweep(full=True)
    assert full["status"] == "finished" and big.state.writes() == writes
    assert len(lookups) >= N_USERS - 5  # every directory user with a Jira account read again


@every_shape
def test_dry_run_reports_what_a_real_run_does_with_zero_writes(big):
    dry = big.sweep(dry_run=True)
    assert big.state.writes() == 0 and dry["dry_run"]
    real = big.sweep()
    assert dry["counts"] == real["counts"]


def test_users_without_application_access_are_read_one_by_one_concurrently(tmp_path, slapd, ldap_ou, jira,
                                                                           services_for, lookups):
    """Jira 9.12: users in no group that grants access are not in the bulk read; the scan reads
    them alone, jira.max_concurrency at a time."""
    jira.state.version = "9.12.0"
    slapd.add_users(ldap_ou, [(f"v{i:02d}", photos.photo(40, 40)) for i in range(40)])
    for i in range(40):
        jira.state.add_user(f"v{i:02d}", groups=())
    settings = make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)])
    rig = Rig(services_for(dataclasses.replace(settings, jira=dataclasses.replace(settings.jira, max_concurrency=4))),
              jira)
    first = rig.sweep()
    assert first["counts"] == {"updated": 40, "not_in_directory": 1}  # and the service account
    writes, lookups[:] = rig.state.writes(), []
    jira.state.latency, jira.state.peak_in_flight = 0.05, {}
    reads = jira.state.count("GET /user")
    second = rig.sweep()
    assert second["counts"] == {"unchanged": 40, "not_in_directory": 1} and rig.state.writes() == writes
    assert lookups == []  # Jira read user by user instead: no photo transferred
    assert jira.state.count("GET /user") - reads == 40
    assert jira.state.peak("GET /user") == 4  # max_concurrency calls in flight, never more
    assert jira.state.count("GET /user/search") == 0


def test_every_jira_call_a_sweep_makes_waits_behind_logins(tmp_path, slapd, ldap_ou, jira, services_for,
                                                         monkeypatch):
    """A sweep's Jira calls wait for their slots behind any login's (in_background), not only
    its syncs': its bulk read (9.12: group pages), the per-user reads of users in no application
    group, a dry run's reads, and the deletes of the old avatars that changed photos leave."""
    from app import jira_budget

    jira.state.version = "9.12.0"
    names = [f"q{i:02d}" for i in range(12)]
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names])
    for i, n in enumerate(names):
        jira.state.add_user(n, groups=() if i % 3 == 0 else ("jira-software-users",))
    calls: list[bool] = []  # each call at the gate: whether in the background
    take = jira_budget._Order.take

    def noted(self) -> bool:
        calls.append(getattr(jira_budget._background, "on", False))
        return take(self)
    monkeypatch.setattr(jira_budget._Order, "take", noted)
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    assert rig.sweep()["counts"]["updated"] == 12
    for n in names[:4]:
        slapd.set_photo(f"uid={n},{ldap_ou}", "jpegPhoto", photos.solid(photos.RED, 64))
    assert rig.sweep(dry_run=True)["counts"] == {"updated": 4, "unchanged": 8, "not_in_directory": 1}
    assert rig.sweep()["counts"]["updated"] == 4
    assert jira.state.count("GET /group/member") and jira.state.count("GET /user") >= 4
    assert jira.state.count("DELETE /user/avatar/{id}") == 4
    assert len(calls) > 50 and calls.count(False) == 0, calls.count(False)


def test_a_pool_grows_to_its_sweep_threads_while_a_sweeps_users_wait_and_back_after(tmp_path, slapd, ldap_ou, jira,
                                                                                  services_for):
    """A service's pool (worker.threads = 1, for logins) syncs a sweep started by the API on up
    to sweep_threads threads, twice jira.max_concurrency: Jira gets max_concurrency calls at
    once, where the one thread would give it one; the added threads end once no job is left."""
    names = [f"w{i:03d}" for i in range(96)]
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names])
    for n in names:
        jira.state.add_user(n)
    settings = make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)], worker={"threads": 1})
    settings = dataclasses.replace(settings, jira=dataclasses.replace(settings.jira, max_concurrency=4))
    services = services_for(settings)
    jira.state.latency = 0.02

    def pool_threads():
        return sum(t.name.startswith("avatar-sync-") for t in threading.enumerate())
    sweep_id = services.sweeps.start()
    assert sweep_run.take_over(services) == sweep_id  # before the pool's look for sweeps could take it
    pool = WorkerPool(services, settings.worker.threads, 0.05, sweep_threads(settings)).start()
    try:
        assert pool_threads() == 1
        sweep_run.run(services, sweep_id)
        wait_until(lambda: pool_threads() == 1, 5, "the added threads to end")
    finally:
        pool.stop()
    assert services.sweeps.summary(sweep_id)["counts"]["updated"] == 96
    assert jira.state.peak("*") == 4  # max_concurrency calls in flight (one thread: 1), never more


def test_only_one_sweep_at_a_time_and_cancel(big):
    first = big.sweeps.start()
    with pytest.raises(SweepConflict, match=f"sweep {first} is running"):
        big.sweeps.start()
    assert big.sweeps.cancel(first)
    assert big.sweeps.summary(first)["status"] == "cancelled"
    assert big.sweeps.start() > first


def test_resumes_after_the_runner_died_without_redoing_finished_users(big, monkeypatch):
    sweep_id = big.sweeps.start()
    assert sweep_run.take_over(big.services) == sweep_id
    # the test is the sweep's one runner: the pool only syncs its jobs (its look for a free
    # sweep could otherwise take it in the moment between the lease's expiry and take_over)
    monkeypatch.setattr(big.services, "start_runner", lambda: None)
    pool = WorkerPool(big.services, threads=4, poll_seconds=0.05).start()
    real_page = sweep_run._Run._page
    pages = []

    def dies_on_second_page(self, directory, users):
        if len(pages) == 1:
            raise SystemExit("killed")  # like kill -9: no error recorded, the lease stays
        pages.append(users)
        return real_page(self, directory, users)
    monkeypatch.setattr(sweep_run._Run, "_page", dies_on_second_page)
    with pytest.raises(SystemExit):
        sweep_run.run(big.services, sweep_id)
    monkeypatch.setattr(sweep_run._Run, "_page", real_page)
    time.sleep(1)  # the first page's users are synced by the pool meanwhile
    first_page = [u.username for u in pages[0]]
    assert sweep_run.take_over(big.services) is None  # the dead runner's lease still holds
    with big.services.store.transaction() as conn:  # ... until it expires
        conn.execute(update(sweeps_table).values(lease_until=sweeps_table.c.started_at))
    assert sweep_run.take_over(big.services) == sweep_id
    sweep_run.run(big.services, sweep_id)
    pool.stop()
    summary = big.sweeps.summary(sweep_id)
    assert summary["status"] == "finished" and summary["done"] == summary["total"]
    assert all(big.state.count("POST /user/avatar", n) <= 1 for n in first_page)
    assert summary["counts"]["updated"] == N_USERS - N_USERS // 10 - 5


def test_a_sweep_whose_runner_died_on_this_host_is_resumed_at_once(tmp_path, slapd, ldap_ou, jira, services_for):
    """kill -9 of the process running a sweep (the command line's, a web worker's): this host's
    processes see it gone and take the sweep over at their next look, and the command line
    resumes it, instead of waiting for its lease to lapse; a live runner keeps it, and so does
    one of another host or PID namespace, whose PIDs mean nothing here."""
    from datetime import timedelta

    from app.tables import utcnow
    slapd.add_users(ldap_ou, [("d0", photos.photo(40, 40))])
    jira.state.add_user("d0")
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    sweep_id = rig.sweeps.start()
    queue = rig.services.queue
    host = queue.owner_prefix.split(":")[0]

    def held_by(owner: str) -> None:  # with a lease far from lapsing
        with rig.services.store.transaction() as conn:
            conn.execute(update(sweeps_table).where(sweeps_table.c.id == sweep_id).values(
                lease_owner=owner, lease_until=utcnow() + timedelta(seconds=60)))
    for keeper in (queue.owner(), "replica-2:0ther0ns:999999:1:1", f"{host}:0ther0ns:999999:1:1"):
        held_by(keeper)
        assert sweep_run.take_over(rig.services) is None, keeper
        assert rig.sweeps.running(lapsed=True) is None, keeper
    held_by(f"{queue.owner_prefix}999999:1:1")  # this host's, a PID that no longer runs
    assert rig.sweeps.running(lapsed=True)["id"] == sweep_id  # the command line would resume it
    assert sweep_run.take_over(rig.services) == sweep_id
    assert sweep_run.take_over(rig.services) is None  # now this live process's


def test_a_runner_stalled_past_its_lease_stops_once_another_process_took_the_sweep_over(
        tmp_path, slapd, ldap_ou, jira, services_for, caplog, monkeypatch):
    """Frozen longer than its lease (a suspended machine, a database away), a runner finds
    another process holding the sweep: it neither renews that lease nor queues, fails or ends
    anything; the other runner goes on alone."""
    from datetime import timedelta

    from sqlalchemy import select

    from app.tables import utcnow
    slapd.add_users(ldap_ou, [("t0", photos.photo(40, 40))])
    jira.state.add_user("t0")
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    sweep_id = rig.sweeps.start()
    assert sweep_run.take_over(rig.services) == sweep_id
    other = {"lease_owner": "replica-2:4242:1", "lease_until": utcnow() + timedelta(seconds=60)}
    real_page = sweep_run._Run._page

    def stalls_before_its_first_page(self, directory, users):
        with rig.services.store.transaction() as conn:  # meanwhile its lease lapsed and was taken
            conn.execute(update(sweeps_table).where(sweeps_table.c.id == sweep_id).values(**other))
        return real_page(self, directory, users)
    monkeypatch.setattr(sweep_run._Run, "_page", stalls_before_its_first_page)
    sweep_run.run(rig.services, sweep_id)  # it wakes up: returns at its first look at the lease
    with rig.services.store.read() as conn:
        row = conn.execute(select(sweeps_table).where(sweeps_table.c.id == sweep_id)).mappings().one()
    assert (row["status"], row["phase"], row["lease_owner"]) == ("running", "scanning", other["lease_owner"])
    assert row["lease_until"].replace(tzinfo=None) == other["lease_until"].replace(tzinfo=None)
    assert rig.sweeps.summary(sweep_id)["total"] == 0  # nothing queued or reported by the stalled one
    assert "taken over by another process" in caplog.text


def test_a_runner_waiting_for_its_users_renews_its_lease_rarely_and_sees_a_cancel_at_once(
        tmp_path, slapd, ldap_ou, jira, services_for):
    """While the queued users are synced, the runner looks at the sweep every 0.25 s but
    writes its lease only once a third of it has passed (each write takes the writer the syncs
    record with); a cancel still ends it at its next look, and whoever waits in its process for
    a run's end wakes then."""
    from sqlalchemy import select
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in ("r0", "r1")])
    for n in ("r0", "r1"):
        jira.state.add_user(n)
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)  # no workers: they stay queued
    sweep_id = rig.sweeps.start()
    assert sweep_run.take_over(rig.services) == sweep_id
    assert rig.sweeps.lease.total_seconds() >= 3  # so no renewal is due during the look below

    def lease_until():
        with rig.services.store.read() as conn:
            return conn.execute(select(sweeps_table.c.lease_until).where(sweeps_table.c.id == sweep_id)).scalar_one()
    runner = threading.Thread(target=sweep_run.run, args=(rig.services, sweep_id))
    runner.start()
    deadline = time.monotonic() + 10
    while rig.sweeps.summary(sweep_id)["phase"] != "syncing" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rig.sweeps.summary(sweep_id)["phase"] == "syncing"
    time.sleep(0.1)  # its first look renews the lease
    renewed = lease_until()
    time.sleep(0.8)  # three looks or more
    assert lease_until() == renewed and runner.is_alive()
    # the command line's progress line waits on the runner's end, not a poll's timeout
    follower = threading.Thread(target=rig.sweeps.wait_for_run_end, args=(rig.sweeps.runs_ended, 60))
    follower.start()
    rig.sweeps.cancel(sweep_id)
    runner.join(2)
    assert not runner.is_alive()
    assert rig.sweeps.summary(sweep_id)["status"] == "cancelled"
    follower.join(5)
    assert not follower.is_alive()


def test_a_login_during_a_sweep_is_synced_at_once(tmp_path, slapd, ldap_ou, jira, services_for):
    names = [f"w{i:03d}" for i in range(120)]
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names] + [("vip", photos.photo(40, 40))])
    for n in names + ["vip"]:
        jira.state.add_user(n)
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    jira.state.latency = 0.01
    sweep_id = rig.sweeps.start()
    sweep_run.take_over(rig.services)
    runner = sweep_run._Run(rig.services, sweep_id)
    runner.owner = rig.services.queue.owner()  # as take_over() wrote it (run() reads it back)
    runner._scan(dry_run=False)  # everything queued at sweep priority
    pool = WorkerPool(rig.services, threads=2, poll_seconds=0.05).start()
    try:
        time.sleep(0.3)
        rig.services.queue.enqueue("vip", LOGIN, source="login")
        deadline = time.monotonic() + 5
        while jira.state.selected_avatar("vip").owner is None and time.monotonic() < deadline:
            time.sleep(0.01)
        pending = rig.sweeps.summary(sweep_id)["total"] - rig.sweeps.summary(sweep_id)["done"]
        assert jira.state.selected_avatar("vip").owner is not None
        assert pending > 50  # the sweep was far from done: the login went first
    finally:
        pool.stop()


def _users_and_a_vip(tmp_path, slapd, ldap_ou, jira, services_for, monkeypatch, names: list[str]):
    """``names`` and "vip", with photos, in the directory and in Jira; "no login waiting" is
    read at each check (test_queue covers the pause)."""
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names + ["vip"]])
    for n in names + ["vip"]:
        jira.state.add_user(n)
    monkeypatch.setattr("app.queue.URGENT_RECHECK", 0)
    return build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)


def test_a_worker_holding_a_batch_of_sweep_jobs_takes_a_login_before_the_rest(tmp_path, slapd, ldap_ou, jira,
                                                                              services_for, monkeypatch):
    names = [f"b{i}" for i in range(4)]
    rig = _users_and_a_vip(tmp_path, slapd, ldap_ou, jira, services_for, monkeypatch, names)
    queue, syncer = rig.services.queue, rig.services.syncer
    for n in names:
        queue.enqueue(n, SWEEP, source="sweep")
    order, real = [], syncer.attempt

    def attempt(username, **kw):
        # read with the batch: the directory entry and the stored state (None for a new user)
        with_batch = kw.get("entry") is not None and kw.get("state", UNKNOWN) is not UNKNOWN
        assert with_batch or (kw.get("entry") is None and kw.get("state", UNKNOWN) is UNKNOWN)
        order.append((username, with_batch))
        if username == "b0":
            queue.enqueue("vip", LOGIN, source="login")  # arrives while the batch is being worked
        return real(username, **kw)
    monkeypatch.setattr(syncer, "attempt", attempt)
    assert WorkerPool(rig.services).run_once()
    # the batch's entries and states were read together; the login's alone, when its sync ran
    assert order == [("b0", True), ("vip", False), ("b1", True), ("b2", True), ("b3", True)]
    assert all(jira.state.selected_avatar(n).owner for n in names + ["vip"])
    # logins are taken one at a time, so that every idle thread takes one at once
    order[:] = []
    queue.enqueue("b3", SWEEP, source="sweep")
    for n in ("b1", "b2"):
        queue.enqueue(n, LOGIN, source="login")
    assert WorkerPool(rig.services).run_once()
    assert [n for n, _ in order] == ["b1"]
    # entries read longer ago than PREFETCH_FRESH_SECONDS are read again
    monkeypatch.setattr("app.worker.PREFETCH_FRESH_SECONDS", 0)
    order[:] = []
    for n in ("b0", "b1"):
        queue.enqueue(n, SWEEP, source="sweep")
    queue.forget("b2")
    assert WorkerPool(rig.services).run_once()
    assert sorted(order) == [("b0", False), ("b1", False), ("b3", False), ("vip", False)]  # b0 brings vip


def test_a_worker_in_a_sweep_takes_a_dead_workers_login_before_its_next_batch(tmp_path, slapd, ldap_ou, jira,
                                                                             services_for, monkeypatch):
    """A worker in a sweep claims its next batch at once while no login waits; a login whose
    worker died (its lease lapsed) is waiting too, and goes first."""
    from datetime import timedelta

    from app.queue import jobs
    from app.tables import utcnow
    names = [f"d{i}" for i in range(5)]
    rig = _users_and_a_vip(tmp_path, slapd, ldap_ou, jira, services_for, monkeypatch, names)
    queue, syncer = rig.services.queue, rig.services.syncer
    monkeypatch.setattr("app.worker.CLAIM_BATCH", 2)
    for n in names:
        queue.enqueue(n, SWEEP, source="sweep")
    order, real = [], syncer.attempt
    monkeypatch.setattr(syncer, "attempt", lambda username, **kw: order.append(username) or real(username, **kw))
    pool = WorkerPool(rig.services)
    assert pool.run_once() and order == ["d0", "d1"]  # this thread is in a sweep now
    queue.enqueue("vip", LOGIN, source="login")
    taken: list = []
    worker = threading.Thread(target=lambda: taken.extend(queue.claim(1)))  # then this worker died
    worker.start()
    worker.join()
    with rig.services.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == taken[0].id).values(lease_until=utcnow() - timedelta(seconds=1)))
    time.sleep(1.1)  # a busy thread looks for lapsed leases once a second
    assert pool.run_once() and order[2] == "vip"
    while pool.run_once():
        pass
    assert order == ["d0", "d1", "vip", "d2", "d3", "d4"]


def _a_sweep_batch(tmp_path, slapd, ldap_ou, jira, services_for, names: list[str]):
    """Users with photos, in Jira, queued by a sweep."""
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names])
    for n in names:
        jira.state.add_user(n)
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    for n in names:
        rig.services.queue.enqueue(n, SWEEP, source="sweep")
    return rig


def test_a_batch_whose_outcomes_cannot_be_recorded_runs_again_without_uploading_again(
        tmp_path, slapd, ldap_ou, jira, services_for, monkeypatch):
    """A sweep batch's outcomes and the ends of its jobs are written in one transaction at the
    batch's end: when it fails, none is recorded, every job keeps its lease, and their next run
    uses the avatars already made."""
    from app.queue import jobs
    names = ["r0", "r1", "r2"]
    rig = _a_sweep_batch(tmp_path, slapd, ldap_ou, jira, services_for, names)
    queue, store = rig.services.queue, rig.services.store
    real_complete = queue.complete

    def dies(done, tx):
        assert sorted(j.username for j in done) == names  # the whole batch at once
        raise RuntimeError("killed while ending the jobs")
    monkeypatch.setattr(queue, "complete", dies)
    assert WorkerPool(rig.services).run_once()
    assert all(jira.state.selected_avatar(n).owner for n in names)  # Jira shows them...
    assert all(store.get(n).last_outcome is None for n in names)  # ...nothing recorded...
    assert {queue.job_for(n)["state"] for n in names} == {"running"}  # ...and the jobs still leased
    monkeypatch.setattr(queue, "complete", real_complete)
    with store.transaction() as tx:  # their leases run out
        tx.execute(update(jobs).values(lease_until=jobs.c.created_at))
    ran: list = []  # a fresh thread takes them up together, as the batch they were
    other = threading.Thread(target=lambda: ran.append(WorkerPool(rig.services).run_once()))
    other.start()
    other.join()
    assert ran == [True]
    assert [store.get(n).last_outcome for n in names] == ["updated"] * 3
    assert [jira.state.created_for(n) for n in names] == [1, 1, 1]  # no second upload
    assert all(queue.job_for(n) is None for n in names)


def test_stopping_a_pool_waits_for_its_threads_no_longer_than_its_timeout_in_all(
        tmp_path, slapd, ldap_ou, jira, services_for, monkeypatch):
    """gunicorn's worker_exit gives WorkerPool.stop what is left of the graceful timeout: with
    every thread stuck in a slow sync, stop() returns after that timeout, for all of them
    together; the jobs keep their leases and run again."""
    names = ["p0", "p1", "p2", "p3"]
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names])
    for n in names:
        jira.state.add_user(n)
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    for n in names:  # logins: taken one a thread
        rig.services.queue.enqueue(n, LOGIN, source="login")
    started, release = threading.Semaphore(0), threading.Event()
    real = rig.services.syncer.attempt

    def slow(username, **kw):
        started.release()
        release.wait(30)
        return real(username, **kw)
    monkeypatch.setattr(rig.services.syncer, "attempt", slow)
    pool = WorkerPool(rig.services, threads=4, poll_seconds=0.05).start()
    try:
        for _ in names:
            assert started.acquire(timeout=10)
        t0 = time.monotonic()
        pool.stop(timeout=0.5)
        assert time.monotonic() - t0 < 1.5  # 0.5 s for the four, not 0.5 s each
        assert {rig.services.queue.job_for(n)["state"] for n in names} == {"running"}
    finally:
        release.set()
    wait_until(lambda: all(rig.services.queue.job_for(n) is None for n in names), 10, "the stuck syncs to end")


def test_a_cancel_drops_the_rest_of_a_batch_a_worker_holds_but_not_a_login_merged_into_it(
        tmp_path, slapd, ldap_ou, jira, services_for, monkeypatch):
    """An admin cancels the sweep on another replica while a worker holds a batch of its jobs:
    the batch's rest is dropped unsynced, except a job a login merged into, which runs."""
    names = ["k0", "k1", "k2", "k3"]
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names])
    for n in names:
        jira.state.add_user(n)
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    queue, sweep_id = rig.services.queue, rig.sweeps.start()
    for n in names:
        queue.enqueue(n, SWEEP, source="sweep", sweep_id=sweep_id)
    replica = services_for(rig.services.settings)  # its own process, as far as caches go
    real = rig.services.syncer.attempt

    def attempt(username, **kw):
        if username == "k0":
            queue.enqueue("k2", LOGIN, source="login")  # k2 logs in: merged into the held job
            assert replica.sweeps.cancel(sweep_id)
        return real(username, **kw)
    monkeypatch.setattr(rig.services.syncer, "attempt", attempt)
    assert WorkerPool(rig.services).run_once()
    assert [jira.state.created_for(n) for n in names] == [1, 0, 1, 0]
    assert all(queue.job_for(n) is None for n in names)  # nothing left to run, nothing leased
    assert rig.sweeps.summary(sweep_id)["status"] == "cancelled"


def test_a_batch_cut_short_by_the_database_still_records_what_it_synced(tmp_path, slapd, ldap_ou, jira,
                                                                         services_for, monkeypatch):
    from sqlalchemy.exc import OperationalError
    names = ["c0", "c1", "c2"]
    rig = _a_sweep_batch(tmp_path, slapd, ldap_ou, jira, services_for, names)
    queue, store = rig.services.queue, rig.services.store

    def database_away():
        raise OperationalError("SELECT", {}, Exception("database is locked"))
    monkeypatch.setattr(queue, "urgent_waiting", database_away)  # looked at before each job after the first
    with pytest.raises(OperationalError):
        WorkerPool(rig.services).run_once()
    assert store.get("c0").last_outcome == "updated" and queue.job_for("c0") is None
    assert [jira.state.created_for(n) for n in names] == [1, 0, 0]
    assert {queue.job_for(n)["state"] for n in ("c1", "c2")} == {"running"}  # back when their leases lapse


def test_a_batch_of_sweep_jobs_keeps_to_what_the_store_holds(tmp_path, slapd, ldap_ou, jira, services_for):
    """The states a worker reads with its batch are the store's: an admin's opt-out stands, and a
    picture already ours is not uploaded again."""
    names = ["s0", "s1", "s2"]
    rig = _a_sweep_batch(tmp_path, slapd, ldap_ou, jira, services_for, names)
    queue, store = rig.services.queue, rig.services.store
    assert WorkerPool(rig.services).run_once()
    assert [jira.state.created_for(n) for n in names] == [1, 1, 1]
    store.set_excluded("s1", True)
    for n in names:
        queue.enqueue(n, SWEEP, source="sweep")
    assert WorkerPool(rig.services).run_once()
    outcomes = {n: store.get(n).last_outcome for n in names}
    assert outcomes == {"s0": "unchanged", "s1": "excluded", "s2": "unchanged"}
    assert [jira.state.created_for(n) for n in names] == [1, 1, 1]


def test_samba_ad_sweep_uses_usn_markers(tmp_path, samba, ad_ou, jira, services_for, lookups):
    names = [f"sweep-ad-{i}" for i in range(6)]
    for n in names:
        samba.add_user(ad_ou, n, thumbnail_photo=photos.photo(96, 96))
        jira.state.add_user(n)
    rig = build(tmp_path, jira, [samba_directory(ad_ou)], services_for)
    assert rig.sweep()["counts"].get("updated") == 6
    samba.set_photo(f"CN={names[0]},{ad_ou}", "thumbnailPhoto", photos.solid(photos.RED, 96))
    lookups[:] = []
    second = rig.sweep()
    assert lookups == [names[0]] and second["counts"]["updated"] == 1
    assert rig.services.store.get(names[0]).marker.startswith("uSNChanged=")


# -- doors: admin API, CLI, schedule ------------------------------------------------------

def test_a_sweep_started_by_the_api_is_let_go_of_when_its_process_exits(tmp_path, slapd, ldap_ou, jira):
    """The admin API runs the sweep it starts on a thread of the web process; when that process
    exits (gunicorn's worker_exit calls stop_runners) the runner lets go of the lease, so that
    another process resumes the sweep at once instead of after the lease."""
    from app import create_app
    slapd.add_users(ldap_ou, [("x1", photos.photo(40, 40))])
    jira.state.add_user("x1")
    app = create_app(make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)],
                                   webhook={"secret": "s"}, admin={"token": "t"}))
    services = app.extensions["avatar_sync"]
    r = app.test_client().post("/admin/sweeps", json={}, headers={"Authorization": "Bearer t"})
    sweep_id = r.get_json()["id"]
    assert r.status_code == 202 and [t.name for t in services.runners] == [f"sweep-{sweep_id}"]
    wait_until(lambda: services.sweeps.summary(sweep_id)["phase"] == "syncing", 10, "the scan")  # no workers here
    assert sweep_run.take_over(services) is None  # the runner holds it
    services.stop_runners(5)
    assert not services.runners[0].is_alive()
    assert services.sweeps.summary(sweep_id)["status"] == "running"
    assert sweep_run.take_over(services) == sweep_id  # free for the next process, now


def test_admin_sweep_api(tmp_path, slapd, ldap_ou, jira):
    from app import create_app
    slapd.add_users(ldap_ou, [("api1", photos.photo(40, 40)), ("api2", None)])
    for n in ("api1", "api2"):
        jira.state.add_user(n)
    app = create_app(make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)],
                                   webhook={"secret": "s"}, admin={"token": "t"}, worker={"poll_seconds": 0.05}))
    http, auth = app.test_client(), {"Authorization": "Bearer t"}
    services = app.extensions["avatar_sync"]
    assert http.post("/admin/sweeps", json={"dry_run": False}).status_code == 401
    assert http.post("/admin/sweeps", json={"dry_run": "no"}, headers=auth).status_code == 400
    pool = WorkerPool(services, threads=2, poll_seconds=0.05).start()
    try:
        r = http.post("/admin/sweeps", json={"dry_run": False}, headers=auth)
        assert r.status_code == 202 and r.get_json()["status"] == "running"
        sweep_id = r.get_json()["id"]
        assert http.post("/admin/sweeps", json={}, headers=auth).status_code == 409
        deadline = time.monotonic() + 20
        while http.get(f"/admin/sweeps/{sweep_id}", headers=auth).get_json()["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        pool.stop()
    body = http.get(f"/admin/sweeps/{sweep_id}", headers=auth).get_json()
    assert body["status"] == "finished" and body["total"] == body["done"] >= 3
    assert body["counts"]["updated"] == 1 and body["counts"]["no_photo"] == 1
    assert any(p["username"] == "api2" and p["outcome"] == "no_photo" for p in body["problems"])
    csv_text = http.get(f"/admin/sweeps/{sweep_id}/problems.csv", headers=auth).get_data(as_text=True)
    assert csv_text.splitlines()[0] == "username,outcome,reason,directory" and "api2,no_photo" in csv_text
    as_json = http.get(f"/admin/sweeps/{sweep_id}/problems.json", headers=auth).get_json()
    assert any(p["username"] == "api2" for p in as_json["problems"])
    assert http.get("/admin/sweeps", headers=auth).get_json()["sweeps"][0]["id"] == sweep_id
    assert http.post(f"/admin/sweeps/{sweep_id}/cancel", headers=auth).status_code == 409
    assert http.get("/admin/sweeps/999", headers=auth).status_code == 404


def test_sweep_refused_when_disabled(tmp_path, slapd, ldap_ou, jira, services_for):
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for, photo_attributes=[])
    with pytest.raises(SweepConflict, match="disabled"):
        rig.sweeps.start()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_schedule_starts_exactly_one_sweep(tmp_path, slapd, ldap_ou, jira, services_for, request, database):
    from datetime import timedelta

    from app import schedule
    from app.tables import utcnow
    url = request.getfixturevalue("fresh_pg_url") if database == "postgres" else f"sqlite:///{tmp_path}/state.db"
    settings = make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)], sweep={"schedule": "01:11"},
                             database_url=url)
    replicas = [services_for(settings) for _ in range(3)]  # three replicas sharing one database
    now = utcnow()
    assert schedule.start_if_due(replicas[0], now) is None  # first call only plans the next run
    later = now + timedelta(days=1, minutes=1)
    started = [schedule.start_if_due(r, later) for r in replicas]
    assert len([s for s in started if s]) == 1
    assert schedule.start_if_due(replicas[0], later) is None
    nxt = schedule.next_run(settings.sweep_schedule, now).astimezone()
    assert (nxt.hour, nxt.minute) == (1, 11) and timedelta(0) < nxt - now.astimezone() <= timedelta(days=1)


def _cli_env(tmp_path, slapd, ldap_ou, jira, extra=""):
    import os

    from tests.test_cli import slapd_toml, write_config
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou), extra=extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    env["AVATAR_SYNC_CONFIG"] = str(config)
    return env, config


def _photo_users(slapd, ldap_ou, jira, prefix: str, count: int, latency: float) -> list[str]:
    """``count`` users with 64 px photos (> 48 px: crop-confirm creates), in Jira too, Jira
    answering each call ``latency`` seconds late."""
    names = [f"{prefix}{i:03d}" for i in range(count)]
    slapd.add_users(ldap_ou, [(n, photos.photo(64, 64)) for n in names])
    for n in names:
        jira.state.add_user(n)
    jira.state.latency = latency
    return names


def test_cli_sweep_prints_a_summary_and_dry_run_writes_nothing(tmp_path, slapd, ldap_ou, jira):
    import subprocess

    from tests.test_cli import SCRIPT
    slapd.add_users(ldap_ou, [("cli1", photos.photo(40, 40)), ("cli2", None), ("cli3", b"broken")])
    for n in ("cli1", "cli2", "cli3"):
        jira.state.add_user(n)
    env, _ = _cli_env(tmp_path, slapd, ldap_ou, jira)
    dry = subprocess.run([SCRIPT, "sweep", "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "(dry run)" in dry.stdout and jira.state.writes() == 0
    real = subprocess.run([SCRIPT, "sweep"], env=env, capture_output=True, text=True, timeout=120)
    assert real.returncode == 0, real.stderr
    lines = real.stdout.splitlines()
    assert lines[0] == "sweep 2: finished"
    table = dict(line.split() for line in lines[2:6])
    assert table == {"invalid_photo": "1", "no_photo": "1", "not_in_directory": "1", "updated": "1"}
    assert "cli3: invalid_photo (jpegPhoto in openldap: not a JPEG" in real.stdout
    assert "sweep 2 [done] 4/4 users" in real.stderr  # the progress line


def test_cli_sweep_in_two_processes_shares_jira_concurrency_and_does_each_user_once(tmp_path, slapd, ldap_ou, jira):
    """`sweep --processes 2`: a helper process syncs beside the command's own threads (each
    sync line names its process), yet Jira never has more than jira.max_concurrency calls at
    once from the two, and every user is uploaded exactly once."""
    import subprocess

    from tests.test_cli import SCRIPT
    # 80 users at 100 ms a call on 3 slots take 8 s: time enough for the helper, whose spawn and
    # imports take 2-3 s on a loaded 2-core machine, to join (at 20 ms the command could finish first)
    names = _photo_users(slapd, ldap_ou, jira, "two", 80, latency=0.1)
    env, _ = _cli_env(tmp_path, slapd, ldap_ou, jira)
    env["AVATAR_SYNC_JIRA_MAX_CONCURRENCY"] = "3"
    done = subprocess.run([SCRIPT, "-v", "sweep", "--processes", "2"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stderr
    syncing = {m.group(1) for m in re.finditer(r"^\S+ \S+ INFO (\d+) app\.sync: sync ", done.stderr, re.M)}
    assert len(syncing) == 2, done.stderr[-3000:]
    assert jira.state.peak("*") == 3  # reached, never passed, by the two processes together
    assert {n: c for n in names if (c := jira.state.created_for(n)) != 1} == {}
    assert dict(line.split() for line in done.stdout.splitlines()[2:4]) == {"not_in_directory": "1", "updated": "80"}


def test_sweep_helpers_stop_when_the_command_dies(tmp_path, slapd, ldap_ou, jira):
    """A helper waits on a pipe from the command: killed with -9, the command leaves no helper
    draining the queue behind it (its pipe closes, the helper stops within its jobs' time)."""
    import os
    import signal
    import subprocess

    from tests.test_cli import SCRIPT
    _photo_users(slapd, ldap_ou, jira, "orph", 40, latency=0.05)
    env, _ = _cli_env(tmp_path, slapd, ldap_ou, jira)
    sweeping = subprocess.Popen([SCRIPT, "sweep", "--processes", "2"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    children: list[int] = []
    while not children or jira.state.writes() == 0:
        assert time.monotonic() < deadline and sweeping.poll() is None
        children = [int(c) for c in Path(f"/proc/{sweeping.pid}/task/{sweeping.pid}/children").read_text().split()]
        time.sleep(0.05)
    os.kill(sweeping.pid, signal.SIGKILL)
    sweeping.wait()
    for child in children:
        while Path(f"/proc/{child}").exists() and "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline + 30, f"helper {child} still runs after the command died"
            time.sleep(0.1)


def test_a_sweep_goes_on_at_full_concurrency_when_a_helper_is_killed(tmp_path, slapd, ldap_ou, jira):
    """A helper killed with -9 mid-sweep: the command gives its Jira slots back and says so,
    the dead helper's users are synced by the command's own threads, each exactly once (the
    crop-confirm names the upload after the photo), and Jira again gets max_concurrency calls
    at once from what is left."""
    import os
    import signal
    import subprocess

    from tests.test_cli import SCRIPT
    names = _photo_users(slapd, ldap_ou, jira, "kill", 80, latency=0.1)
    env, _ = _cli_env(tmp_path, slapd, ldap_ou, jira)
    env["AVATAR_SYNC_JIRA_MAX_CONCURRENCY"] = "3"
    sweeping = subprocess.Popen([SCRIPT, "sweep", "--processes", "2"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    helper = None
    while helper is None or jira.state.writes() < 30:
        assert time.monotonic() < deadline and sweeping.poll() is None
        children = Path(f"/proc/{sweeping.pid}/task/{sweeping.pid}/children").read_text().split()
        helper = next((int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()), None)
        time.sleep(0.02)
    os.kill(helper, signal.SIGKILL)
    with jira.state.lock:
        jira.state.peak_in_flight.clear()  # from here on: the command alone
    out, err = sweeping.communicate(timeout=120)
    assert sweeping.returncode == 0, err[-3000:]
    assert re.search(rf"sweep helper {helper} died \(exit code -9\), \d Jira slots it held given back", err), err
    assert dict(line.split() for line in out.splitlines()[2:4]) == {"not_in_directory": "1", "updated": "80"}
    assert {n: c for n in names if (c := jira.state.created_for(n)) != 1} == {}
    assert jira.state.peak("*") == 3  # the dead helper's slots are in use again


def _sweep_command_under_way(env, jira, names: list[str], **popen):
    """`sweep` started, once 20 of ``names`` have their picture."""
    import subprocess

    from tests.test_cli import SCRIPT
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    sweeping = subprocess.Popen([SCRIPT, "sweep"], env=env, **popen)
    deadline = time.monotonic() + 60
    while sum(jira.state.selected_avatar(n).owner is not None for n in names) < 20:
        assert time.monotonic() < deadline and sweeping.poll() is None
        time.sleep(0.05)
    return sweeping


def _kill_a_sweep_command_mid_way(env, jira, names: list[str]) -> None:
    """`sweep` killed with -9, with its helpers, once 20 of ``names`` have their picture."""
    import os
    import signal
    import subprocess

    sweeping = _sweep_command_under_way(env, jira, names, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
    os.killpg(sweeping.pid, signal.SIGKILL)
    sweeping.wait()


def test_sweep_killed_mid_way_resumes_after_restart_without_redoing_users(tmp_path, slapd, ldap_ou, jira):
    import signal
    import subprocess

    from app.config import load_settings
    from app.services import build_services
    from tests.test_cli import SCRIPT
    names = _photo_users(slapd, ldap_ou, jira, "kill", 150, latency=0.02)
    env, config = _cli_env(tmp_path, slapd, ldap_ou, jira, extra="[worker]\nlease_seconds = 2\npoll_seconds = 0.1\n")
    _kill_a_sweep_command_mid_way(env, jira, names)
    deadline = time.monotonic() + 60
    done_before = sum(jira.state.selected_avatar(n).owner is not None for n in names)
    assert done_before < len(names)
    restarted = subprocess.Popen([SCRIPT, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        services = build_services(load_settings(config, env={}))
        sweeps = services.sweeps
        while sweeps.summary(1)["status"] == "running":
            assert time.monotonic() < deadline + 60, sweeps.summary(1)
            time.sleep(0.2)
        summary = sweeps.summary(1)
        # A user whose sync the killed run finished, but whose job it had not yet closed, is
        # run again and reported unchanged: done once, reported by the run that closed it.
        counts = dict(summary["counts"])
        assert counts.pop("not_in_directory") == 1  # the emulator's service account
        assert summary["status"] == "finished" and set(counts) <= {"updated", "unchanged"}, summary
        assert counts.get("updated", 0) + counts.get("unchanged", 0) == len(names)
        assert {n: c for n in names if (c := jira.state.created_for(n)) != 1} == {}
        services.close()
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(30)


def test_a_sweep_command_killed_mid_way_is_resumed_by_the_next_one_without_a_service(tmp_path, slapd, ldap_ou, jira):
    """Without a service to take it over, only the command line can finish a sweep a killed
    command left running; refused, every later sweep would be refused too. The killed command
    ran on this host, so the next one sees it gone at once: no waiting for its leases (the
    default 120 s) to lapse."""
    import subprocess

    from tests.test_cli import SCRIPT
    names = _photo_users(slapd, ldap_ou, jira, "again", 60, latency=0.02)
    env, _ = _cli_env(tmp_path, slapd, ldap_ou, jira)
    _kill_a_sweep_command_mid_way(env, jira, names)
    writes = jira.state.writes()
    other_kind = subprocess.run([SCRIPT, "sweep", "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert other_kind.returncode == 1 and jira.state.writes() == writes
    assert ("sweep 1, a sweep, was left unfinished by a process that stopped; resume it with "
            "`jira-avatar-sync sweep`") in other_kind.stderr
    resumed = subprocess.run([SCRIPT, "sweep"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming sweep 1 (a sweep, started " in resumed.stderr
    assert resumed.stdout.startswith("sweep 1: finished")
    counts = dict(re.findall(r"^(\w+) +(\d+)$", resumed.stdout.split("\ntotal")[0], re.M))
    assert counts.pop("not_in_directory") == "1" and set(counts) <= {"updated", "unchanged"}, resumed.stdout
    assert sum(map(int, counts.values())) == len(names)
    assert {n: c for n in names if (c := jira.state.created_for(n)) != 1} == {}
    again = subprocess.run([SCRIPT, "sweep"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.startswith("sweep 2: finished")


def test_a_sweep_command_stopped_by_sigterm_says_so_and_lets_the_next_one_resume_at_once(tmp_path, slapd, ldap_ou,
                                                                                       jira):
    """SIGTERM (a service manager's stop) is not Ctrl-C: the sweep is not cancelled. The running
    syncs finish, the summary so far is printed, and the sweep's lease is let go at once, so
    the next command resumes it without waiting for the lease (120 s here) to lapse."""
    import signal
    import subprocess

    from tests.test_cli import SCRIPT
    names = _photo_users(slapd, ldap_ou, jira, "term", 60, latency=0.02)
    env, _ = _cli_env(tmp_path, slapd, ldap_ou, jira)
    sweeping = _sweep_command_under_way(env, jira, names)
    sweeping.send_signal(signal.SIGTERM)
    out, err = sweeping.communicate(timeout=60)
    assert sweeping.returncode == 1, err[-3000:]
    assert "stopped (SIGTERM): the running syncs finish; sweep 1 goes on in the service" in err
    assert out.startswith("sweep 1: running")
    assert sum(jira.state.selected_avatar(n).owner is not None for n in names) < len(names)
    resumed = subprocess.run([SCRIPT, "sweep"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0 and "resuming sweep 1 (a sweep" in resumed.stderr, err + resumed.stderr[-3000:]
    assert resumed.stdout.startswith("sweep 1: finished")
    assert {n: c for n in names if (c := jira.state.created_for(n)) != 1} == {}


def test_ctrl_c_cancels_the_command_lines_sweep(tmp_path, slapd, ldap_ou, jira):
    import signal
    import subprocess

    from tests.test_cli import SCRIPT
    names = _photo_users(slapd, ldap_ou, jira, "intr", 60, latency=0.02)
    env, _ = _cli_env(tmp_path, slapd, ldap_ou, jira)
    sweeping = _sweep_command_under_way(env, jira, names)
    sweeping.send_signal(signal.SIGINT)
    out, err = sweeping.communicate(timeout=60)
    assert sweeping.returncode == 1 and "cancelled" in err, err[-3000:]
    assert out.startswith("sweep 1: cancelled")
    done = sum(jira.state.selected_avatar(n).owner is not None for n in names)
    assert done < len(names)
    again = subprocess.run([SCRIPT, "sweep"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.startswith("sweep 2: finished"), again.stderr[-3000:]
    assert {n: c for n in names if (c := jira.state.created_for(n)) != 1} == {}


def test_old_sweep_reports_are_pruned(tmp_path, slapd, ldap_ou, jira, services_for):
    from datetime import timedelta

    from app.tables import utcnow
    slapd.add_users(ldap_ou, [("p1", None)])
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    ids = [rig.sweep()["id"] for _ in range(3)]
    with rig.services.store.transaction() as conn:
        conn.execute(update(sweeps_table).values(started_at=utcnow() - timedelta(days=40)))
    assert rig.sweeps.prune(keep_days=30, keep_last=1) == 2
    assert [s["id"] for s in rig.sweeps.latest()] == ids[-1:]
    assert rig.sweeps.problems(ids[0]) == [] and rig.sweeps.problems(ids[-1]) != []


def test_mixed_case_directory_names_match_jira_users(tmp_path, slapd, ldap_ou, jira, services_for, lookups):
    """AD sAMAccountNames are often mixed case; Jira's usernames are lower case. Same user."""
    slapd.add_users(ldap_ou, [("JDoe", photos.photo(64, 64))])
    jira.state.add_user("jdoe")
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    first = rig.sweep()  # (the service account is the one Jira user in no directory)
    assert first["counts"] == {"updated": 1, "not_in_directory": 1}
    assert rig.services.syncer.debounce.decision("jdoe") == "debounced"  # one state row for both spellings
    lookups[:] = []
    assert rig.sweep()["counts"] == {"unchanged": 1, "not_in_directory": 1} and lookups == []


def test_report_spells_users_as_the_directory_and_jira_do(tmp_path, slapd, ldap_ou, jira, services_for):
    """The report is for people: 'Carol.Smith' as the directory has her, not the lowercase key
    that jobs and states use; a Jira user no directory holds as Jira spells the name."""
    slapd.add_users(ldap_ou, [("Carol.Smith", None), ("Dan.Jones", photos.photo(64, 64))])
    jira.state.add_user("carol.smith")
    jira.state.add_user("Eve.Only")
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    summary = rig.sweep()
    problems = {p["username"]: p["outcome"] for p in rig.sweeps.problems(summary["id"])
                if p["username"] != JIRA_USER}
    assert problems == {"Carol.Smith": "no_photo", "Dan.Jones": "not_in_jira", "Eve.Only": "not_in_directory"}
    # the second sweep settles Carol from her stored state: still her directory spelling
    problems = {p["username"] for p in rig.sweeps.problems(rig.sweep()["id"])}
    assert {"Carol.Smith", "Dan.Jones", "Eve.Only"} <= problems


def test_a_photo_replaced_within_the_second_of_its_sync_is_seen(tmp_path, slapd, ldap_ou, jira, services_for):
    """modifyTimestamp has a resolution of one second: a photo set, synced and replaced within
    one second leaves it as it was. OpenLDAP's entryCSN tells the two changes apart."""
    slapd.add_users(ldap_ou, [("quick", None)])
    jira.state.add_user("quick")
    rig = build(tmp_path, jira, [slapd_directory(slapd, ldap_ou)], services_for)
    dn = f"uid=quick,{ldap_ou}"
    for _ in range(5):  # the three steps must fall within one second of slapd's clock
        time.sleep(1.02 - time.time() % 1)
        slapd.set_photo(dn, "jpegPhoto", photos.solid(photos.RED, 64))
        assert job_run.sync_now(rig.services, "quick", force=True).outcome == "updated"
        slapd.set_photo(dn, "jpegPhoto", photos.solid(photos.BLUE, 64))
        if _timestamp(slapd, dn) in rig.services.store.get("quick").marker:
            break
    else:
        pytest.skip("could not set, sync and replace the photo within one second")
    summary = rig.sweep()
    assert summary["counts"] == {"updated": 1, "not_in_directory": 1}
    assert photos.close(photos.dominant(jira.state.selected_avatar("quick").png), photos.BLUE)


def _timestamp(slapd, dn: str) -> str:
    with slapd.admin() as conn:
        conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=["modifyTimestamp"])
        return "modifyTimestamp=" + conn.response[0]["raw_attributes"]["modifyTimestamp"][0].decode()
