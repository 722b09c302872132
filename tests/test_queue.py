"""LoginQueue on SQLite and PostgreSQL: merging, priorities, leases, back-off, atomic claims."""
from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
from sqlalchemy import update

from app import lease_holders, states
from app.queue import LOGIN, SWEEP, USER_EVENT, LoginQueue, RetryPolicy, jobs
from app.store import Store
from app.tables import utcnow
from tests.helpers import module_clock


@pytest.fixture
def queue(database_url):
    store = Store(database_url)
    with store.transaction() as conn:
        conn.execute(jobs.delete())
    yield LoginQueue(store, RetryPolicy(max_attempts=3, base_seconds=10, max_seconds=60, lease_seconds=30))
    store.dispose()


def complete(queue, *done):
    with queue.store.transaction() as tx:
        queue.complete(list(done), tx)


def fail(queue, job, reason) -> bool:
    with queue.store.transaction() as tx:
        return queue.fail(job, reason, tx)


def test_one_row_per_user_and_login_beats_sweep(queue):
    queue.enqueue("bob", SWEEP, source="sweep")
    queue.enqueue("alice", SWEEP, source="sweep")
    queue.enqueue("bob", LOGIN, source="login")
    queue.enqueue("bob", LOGIN, source="login")
    assert queue.counts() == {"pending": 2}
    first = queue.claim(1)[0]
    assert (first.username, first.priority, first.source) == ("bob", LOGIN, "login")
    assert queue.claim(1)[0].username == "alice"
    assert queue.claim(1) == []


def test_a_claim_for_more_sweep_jobs_leaves_logins_to_other_threads(queue):
    for name in ("s1", "s2"):
        queue.enqueue(name, SWEEP, source="sweep")
    queue.enqueue("carol", LOGIN, source="login")
    assert queue.urgent_waiting()
    assert sorted(j.username for j in queue.claim(3, min_priority=SWEEP)) == ["s1", "s2"]
    assert queue.claim(3)[0].username == "carol" and not queue.urgent_waiting()


def test_no_urgent_job_is_believed_for_a_moment_only(queue, monkeypatch):
    monkeypatch.setattr("app.queue.URGENT_RECHECK", 0.3)
    assert not queue.urgent_waiting()
    other_process = LoginQueue(queue.store)  # a gunicorn worker's queue: its enqueue is not seen here
    other_process.enqueue("dave", LOGIN, source="login")
    assert not queue.urgent_waiting()  # the "no" of a moment ago, not another read
    time.sleep(0.35)
    assert queue.urgent_waiting()
    assert queue.urgent_waiting()  # a "yes" is read again each time, never remembered


def test_a_login_this_process_enqueues_is_seen_at_once(queue, monkeypatch):
    monkeypatch.setattr("app.queue.URGENT_RECHECK", 60)
    assert not queue.urgent_waiting()
    queue.enqueue("carol", SWEEP, source="sweep")  # a sweep's job is not urgent: the "no" stands
    assert not queue.urgent_waiting()
    queue.enqueue("dave", LOGIN, source="login")
    assert queue.urgent_waiting()


def test_enqueue_wakes_this_process(queue):
    queue.wakeup.clear()
    queue.enqueue("bob")
    assert queue.wakeup.is_set()


def test_complete_removes_the_job(queue):
    queue.enqueue("bob")
    complete(queue, queue.claim(1)[0])
    assert queue.job_for("bob") is None


def test_login_during_a_running_job_merges_but_a_user_event_runs_again(queue):
    queue.enqueue("bob")
    job = queue.claim(1)[0]
    queue.enqueue("bob", LOGIN, source="login")  # that run is the sync it asks for
    complete(queue, job)
    assert queue.job_for("bob") is None
    queue.enqueue("bob")
    job = queue.claim(1)[0]
    queue.enqueue("bob", USER_EVENT, source="updated")
    assert queue.claim(1) == []  # never two runs of one user at once
    complete(queue, job)
    again = queue.claim(1)
    assert [j.username for j in again] == ["bob"] and again[0].attempts == 1


def test_jobs_completed_together_end_except_those_of_a_user_event_that_came_meanwhile(queue):
    for name in ("ann", "bob", "cid"):
        queue.enqueue(name, SWEEP, source="sweep")
    batch = queue.claim(3, min_priority=SWEEP)
    queue.enqueue("bob", USER_EVENT, source="updated")  # while the batch ran
    complete(queue, *batch)
    assert queue.job_for("ann") is None and queue.job_for("cid") is None
    assert [(j.username, j.attempts) for j in queue.claim(3)] == [("bob", 1)]  # run again, afresh


def test_failure_backs_off_then_is_kept_as_failed(queue):
    queue.enqueue("bob")
    for attempt in (1, 2):
        job = queue.claim(1)[0]
        assert job.attempts == attempt
        assert fail(queue, job, f"Jira down {attempt}") is True
        info = queue.job_for("bob")
        assert info["state"] == "pending" and info["last_error"] == f"Jira down {attempt}"
        assert queue.claim(1) == []  # not due yet
        _make_due(queue)
    job = queue.claim(1)[0]
    assert fail(queue, job, "Jira down 3") is False
    info = queue.job_for("bob")
    assert info["state"] == "failed" and info["attempts"] == 3 and info["last_error"] == "Jira down 3"
    assert queue.claim(1) == []
    queue.enqueue("bob")  # a new event revives it with fresh attempts
    assert queue.claim(1)[0].attempts == 1


def test_backoff_grows_with_jitter():
    policy = RetryPolicy(base_seconds=10, max_seconds=100)
    for attempts, ceiling in [(1, 10), (2, 20), (3, 40), (5, 100), (9, 100)]:
        delays = [policy.delay(attempts) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_expired_lease_is_taken_again(queue):
    queue.enqueue("bob")
    job = queue.claim(1)[0]
    assert queue.claim(1) == []
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).values(lease_until=utcnow() - _seconds(1)))
    retaken = queue.claim(1)[0]
    assert retaken.id == job.id and retaken.attempts == 2


def test_a_process_renews_the_leases_of_the_jobs_it_runs_and_no_others(queue):
    """A sync slower than its lease keeps its job: the process renews the leases of the jobs its
    threads run, so no other worker takes one while it runs. Another process's lease (same
    host, a pid that starts alike; a host whose name matches ours but for a LIKE wildcard), and
    a job of ours that no thread runs any more (its outcome could not be recorded), lapse."""
    from sqlalchemy import select

    from app import per_process

    queue.owner_prefix = "host_a:"  # "_" is LIKE's any-character
    for name in ("mine", "other-pid", "other-host", "done", "let-go"):
        queue.enqueue(name)
    held = {j.username: j for j in queue.claim(5)}
    complete(queue, held["done"])
    pid = per_process.pid()
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).values(lease_until=utcnow() - _seconds(1)))
        for name, owner in {"other-pid": f"host_a:{pid}0:1", "other-host": f"hostxa:{pid}:1"}.items():
            conn.execute(update(jobs).where(jobs.c.username == name).values(lease_owner=owner))
    running = [j.id for name, j in held.items() if name != "let-go"]
    assert queue.renew_leases(running) == 1
    with queue.store.read() as conn:
        until = dict(conn.execute(select(jobs.c.username, jobs.c.lease_until)).all())
    assert states.aware(until["mine"]) > utcnow() + _seconds(25)  # a lease of 30 s from now
    queue._next_expiry_check = 0.0  # (a claim looks for lapsed leases once a second)
    assert sorted(j.username for j in queue.claim(5)) == ["let-go", "other-host", "other-pid"]  # lapsed


def test_the_lease_keeper_renews_while_a_job_is_held_and_its_thread_ends_after():
    from app.leases import LeaseKeeper

    renewed = []
    keeper = LeaseKeeper(renewed.append, every=0.05)
    with keeper.held([7, 8]):
        time.sleep(0.3)
        thread = keeper._held.get().keeper  # (other tests' keepers may run in this process too)
        assert thread is not None and thread.is_alive()
    assert renewed and all(sorted(ids) == [7, 8] for ids in renewed)
    count = len(renewed)
    thread.join(1)
    time.sleep(0.1)
    assert len(renewed) == count  # nothing held: nothing renewed, and no thread kept
    assert not thread.is_alive() and keeper._held.get().keeper is None


def test_an_admins_take_runs_the_users_own_job_and_never_beside_a_worker(queue):
    """An admin's sync now takes the user's job: a fresh row, or the queued one (a sweep's keeps
    its sweep, to be counted there, and loses the sweep's stale view of Jira); while a worker
    holds the job it gets none, and the worker's run is followed by one more."""
    from app.jira import JiraUser
    from app.queue import MANUAL

    fresh = queue.take("Ann", force=True)
    assert (fresh.username, fresh.priority, fresh.force, fresh.attempts) == ("ann", MANUAL, True, 1)
    assert queue.claim(1) == [] and queue.held_until("ann")  # no worker takes it meanwhile
    complete(queue, fresh)
    assert queue.job_for("ann") is None

    with queue.store.transaction() as tx:
        queue.enqueue_sweep(tx, 5, [("bob", JiraUser("bob", "JIRAUSER1", "10", False))])
    taken = queue.take("bob")
    assert (taken.sweep_id, taken.priority, taken.jira_user) == (5, MANUAL, None)

    queue.enqueue("cid")
    worker = queue.claim(1)[0]
    assert queue.take("cid") is None and queue.held_until("cid")
    complete(queue, worker)
    assert queue.held_until("cid") is None
    again = queue.take("cid")  # the run the admin asked for
    assert again is not None and again.id == worker.id

    queue.enqueue("dead")
    queue.claim(1)
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.username == "dead").values(lease_until=utcnow() - _seconds(1)))
    assert queue.take("dead") is not None  # a dead worker's job is free


def test_a_worker_that_keeps_finding_work_still_takes_over_expired_leases(queue, monkeypatch):
    """A busy thread skips the idle probe and checks for expired leases once a second only;
    a dead worker's job must still come back while a sweep's queue never runs dry."""
    clock = module_clock(monkeypatch, "app.queue")
    queue.enqueue("dead-workers-job")
    stuck = queue.claim(1)[0]
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == stuck.id).values(lease_until=utcnow() - _seconds(1)))
    for i in range(5):
        queue.enqueue(f"sweep{i}", SWEEP, source="sweep")
    assert queue.claim(1)[0].username == "sweep0"  # within the second: pending work only
    clock[0] += 1.5
    retaken = queue.claim(1)[0]
    assert retaken.id == stuck.id and retaken.attempts == 2


def test_a_dead_workers_batches_come_back_together_not_one_batch_a_second(queue, monkeypatch):
    """A helper killed mid-sweep leaves a batch leased on each of its threads: a busy thread
    that finds a full batch of them looks again at its next claim."""
    module_clock(monkeypatch, "app.queue")  # held still: no lease lapses while the test runs
    for i in range(20):
        queue.enqueue(f"s{i:02d}", SWEEP, source="sweep")
    stuck: list = []
    dead = threading.Thread(target=lambda: stuck.extend(queue.claim(20, min_priority=SWEEP)))  # another worker
    dead.start()
    dead.join()
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).values(lease_until=utcnow() - _seconds(1)))
    for i in range(5):
        queue.enqueue(f"fresh{i}", SWEEP, source="sweep")
    taken = [j for _ in range(3) for j in queue.claim(8, min_priority=SWEEP)]  # all within one second
    assert sorted(j.id for j in taken[:20]) == sorted(j.id for j in stuck)
    assert all(j.attempts == 2 for j in taken[:20])
    assert {j.username for j in taken[20:]} <= {f"fresh{i}" for i in range(5)}


def test_a_held_sweep_job_is_dropped_on_cancel_unless_a_login_or_an_event_merged_into_it(queue):
    for n in ("plain", "logged-in", "updated"):
        queue.enqueue(n, SWEEP, source="sweep")
    held = {j.username: j for j in queue.claim(3, min_priority=SWEEP)}
    queue.enqueue("logged-in", LOGIN, source="login")
    queue.enqueue("updated", USER_EVENT, source="user_updated")
    assert [queue.drop_cancelled(held[n]) for n in ("plain", "logged-in", "updated")] == [True, False, False]
    assert queue.job_for("plain") is None
    assert queue.job_for("logged-in")["state"] == queue.job_for("updated")["state"] == "running"


def test_a_login_whose_worker_died_counts_as_waiting(queue, monkeypatch):
    """A worker busy with sweep batches claims sweep jobs only while no login waits; a login job
    whose worker died (its lease lapsed) must count as waiting, or it would wait for the sweep."""
    monkeypatch.setattr("app.queue.URGENT_RECHECK", 0)
    queue.enqueue("dead-workers-login", LOGIN, source="login")
    stuck = queue.claim(1)[0]
    queue.enqueue("sweep0", SWEEP, source="sweep")
    assert not queue.urgent_waiting()  # leased, and the lease runs
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == stuck.id).values(lease_until=utcnow() - _seconds(1)))
    assert queue.urgent_waiting()


def test_jobs_given_back_are_pending_at_once_without_an_attempt_counted(queue):
    for n in ("g0", "g1", "g2"):
        queue.enqueue(n, SWEEP, source="sweep")
    batch = queue.claim(3, min_priority=SWEEP)
    queue.give_back(batch[1:])  # the worker stops after its first job
    assert queue.job_for("g0")["state"] == "running"
    assert [queue.job_for(n)["state"] for n in ("g1", "g2")] == ["pending", "pending"]
    retaken = queue.claim(3, min_priority=SWEEP)
    assert sorted(j.username for j in retaken) == ["g1", "g2"] and {j.attempts for j in retaken} == {1}


def test_dead_process_leases_are_released(queue):
    queue.enqueue("bob")
    queue.claim(1)
    with queue.store.transaction() as conn:  # pretend a process that no longer exists took it
        conn.execute(update(jobs).values(lease_owner=queue.owner_prefix + "999999:1"))
    assert queue.release_dead_leases() == 1
    assert queue.claim(1)[0].username == "bob"


def test_leases_of_live_processes_and_other_hosts_are_kept(queue):
    """A "_" in the host name is no wildcard: another host's pid means nothing here."""
    queue.enqueue("bob")
    queue.enqueue("eve")
    queue.claim(2)
    assert queue.release_dead_leases() == 0  # this process's, alive
    queue.owner_prefix = "host_a:"
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.username == "eve").values(lease_owner="hostXa:999999:1"))
    assert queue.release_dead_leases() == 0
    assert [queue.job_for(n)["state"] for n in ("bob", "eve")] == ["running", "running"]


def test_a_lease_of_an_earlier_process_with_a_reused_pid_is_released(queue):
    """A restarted container keeps its host name and counts PIDs from 1 again: the killed
    worker's PID may be this live process's. Its start time tells them apart."""
    import os

    queue.enqueue("bob")
    queue.enqueue("eve")
    queue.claim(2)
    mine = queue.owner()
    pid, started, thread = mine.removeprefix(queue.owner_prefix).split(":")
    assert (pid, started) == (str(os.getpid()), lease_holders.started(os.getpid()))
    earlier = f"{queue.owner_prefix}{pid}:{int(started) - 500}:{thread}"
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.username == "eve").values(lease_owner=earlier))
    assert queue.release_dead_leases() == 1
    assert [queue.job_for(n)["state"] for n in ("bob", "eve")] == ["running", "pending"]
    assert queue.renew_leases([j.id for j in queue.claim(1)]) == 1  # eve, now this process's


def test_a_lease_from_another_pid_namespace_of_the_same_host_name_is_kept(queue, monkeypatch):
    """Two containers of one pod (the service and a separate worker) share a host name and
    the database, not their PIDs: neither may take the other's PIDs for its own."""
    queue.enqueue("bob")
    queue.claim(1)
    host = queue.owner_prefix.split(":")[0]
    with queue.store.transaction() as conn:  # a PID that does not exist here
        conn.execute(update(jobs).values(lease_owner=f"{host}:0ther0ns:999999:1:1"))
    assert queue.release_dead_leases() == 0
    monkeypatch.setattr(lease_holders, "namespace", lambda: lease_holders.UNKNOWN_NAMESPACE)
    blind = LoginQueue(queue.store)  # no /proc: nothing can be judged, every lease lapses
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).values(lease_owner=f"{blind.owner_prefix}999999:1:1"))
    assert blind.release_dead_leases() == 0
    assert queue.job_for("bob")["state"] == "running"


def test_a_worker_in_a_pid_namespace_of_its_own_keeps_its_job(queue, database_url, tmp_path):
    """The same, for real: a process in a PID namespace of its own (unshare, as a second
    container of a pod) holds a job under a PID that means nothing here; this process, of
    the same host name, must not free it."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("unshare") is None:
        pytest.skip("no unshare (util-linux) on this machine")
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    # the namespace's next PID, chosen where this namespace has no process
    start = next(p for p in range(pid_max - 100, 300, -1) if not os.path.exists(f"/proc/{p + 1}"))
    holder = tmp_path / "holder.py"
    holder.write_text(
        "import sys\n"
        "from app.queue import LoginQueue\n"
        "from app.store import Store\n"
        f"queue = LoginQueue(Store({database_url!r}))\n"
        "queue.enqueue('bob')\n"
        "assert queue.claim(1)\n"
        "print(queue.owner(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    script = f"echo {start} > /proc/sys/kernel/ns_last_pid && {sys.executable} {holder}; :"
    child = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        owner = child.stdout.readline().strip()
        if not owner:
            child.kill()
            pytest.skip(f"unshare --pid is not allowed here: {child.communicate()[1].strip()}")
        host, pid = owner.split(":")[0], owner.split(":")[-3]  # "host:...:pid:start:thread"
        assert host == queue.owner_prefix.split(":")[0] and pid == str(start + 1)
        assert not os.path.exists(f"/proc/{pid}")  # a host-name-only check would call it dead
        assert queue.release_dead_leases() == 0
        assert queue.job_for("bob")["state"] == "running"
    finally:
        child.stdin.close()
        child.wait(10)


def test_a_zombie_workers_lease_is_released(queue):
    """Workers killed together with their master stay zombies until reaped: dead all the same."""
    import subprocess
    import time
    child = subprocess.Popen(["true"])  # exits at once; unreaped, it stays a zombie
    try:
        time.sleep(0.3)
        queue.enqueue("bob")
        queue.claim(1)
        with queue.store.transaction() as conn:
            conn.execute(update(jobs).values(lease_owner=f"{queue.owner_prefix}{child.pid}:1"))
        assert queue.release_dead_leases() == 1
    finally:
        child.wait()


def test_login_wait_is_the_age_of_the_oldest_due_login_no_worker_took(queue):
    """What tells an operator that nothing drains the queue: a due login left unclaimed. Sweep
    jobs (which wait their turn by design), retries not yet due and running jobs are left out."""
    from datetime import timedelta

    assert queue.login_wait() == 0.0
    queue.enqueue("sweepy", SWEEP, source="sweep")
    queue.enqueue("later")
    queue.enqueue("running")
    queue.enqueue("waiting", USER_EVENT, source="updated")
    now = utcnow()
    with queue.store.transaction() as conn:
        for name, age in {"sweepy": 3600, "later": -600, "running": 900, "waiting": 400}.items():
            conn.execute(update(jobs).where(jobs.c.username == name).values(next_try_at=now - timedelta(seconds=age)))
        conn.execute(update(jobs).where(jobs.c.username == "running").values(state="running"))
    assert 400 <= queue.login_wait() < 460
    queue.claim(1)  # "waiting", the only due one: now none waits
    assert queue.login_wait() == 0.0


def test_duplicate_delivery(queue):
    assert queue.enqueue("bob", delivery_id="abc") is True
    assert queue.enqueue("bob", delivery_id="abc") is False
    assert queue.enqueue("bob", delivery_id="def") is True


def _claim_all(url, results):
    q = LoginQueue(Store(url))
    mine = []
    while True:
        claimed = q.claim(3)
        if not claimed:
            break
        mine.extend(j.username for j in claimed)
    results.put(mine)


def test_claims_are_atomic_across_processes(queue, database_url):
    for i in range(120):
        queue.enqueue(f"user{i}", SWEEP, source="sweep")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(database_url, results)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [name for _ in procs for name in results.get(timeout=60)]
    for p in procs:
        p.join(30)
    assert sorted(claimed) == sorted(f"user{i}" for i in range(120))  # each exactly once


def _seconds(n):
    from datetime import timedelta
    return timedelta(seconds=n)


def _make_due(queue):
    with queue.store.transaction() as conn:
        conn.execute(update(jobs).values(next_try_at=utcnow() - _seconds(1)))


def test_old_delivery_ids_are_pruned(queue):
    from app.queue import deliveries
    queue.enqueue("bob", delivery_id="old")
    with queue.store.transaction() as conn:
        conn.execute(update(deliveries).values(received_at=utcnow() - _seconds(3 * 86400)))
    queue.enqueue("bob", delivery_id="new")
    queue.prune_deliveries()
    assert queue.enqueue("bob", delivery_id="old") is True  # forgotten, so accepted again
    assert queue.enqueue("bob", delivery_id="new") is False


def test_a_job_ends_in_the_transaction_that_records_the_outcome(queue):
    """On both databases: the worker closes a job inside the store's outcome transaction."""
    store = queue.store
    for name in ("alice", "bob"):
        store.delete(name)
        queue.enqueue(name)
    alice, bob = sorted(queue.claim(2), key=lambda j: j.username)

    def settled(state):
        state.last_outcome = "no_photo"
    with store.transaction() as tx:
        states.update(tx, "alice", settled)
        queue.complete([alice], tx)
    assert queue.job_for("alice") is None and store.get("alice").last_outcome == "no_photo"

    with pytest.raises(RuntimeError), store.transaction() as tx:
        states.update(tx, "bob", settled)
        queue.complete([bob], tx)
        raise RuntimeError("killed")
    assert queue.job_for("bob")["state"] == "running" and store.get("bob") is None  # neither happened
    assert fail(queue, bob, "Jira down") is True and queue.job_for("bob")["state"] == "pending"
