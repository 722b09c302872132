"""gunicorn settings and hooks for jira-avatar-sync (deploy/gunicorn.conf.py re-exports these).

gthread workers: the webhook only verifies, inserts one row and answers, so a few threads per
process are plenty. No preload: each worker builds its own app, so no socket or thread is
ever shared across a fork. The sync worker threads start in post_worker_init (after fork) and
are stopped, letting running jobs finish, in worker_exit.

Metrics: every worker counts in files under PROMETHEUS_MULTIPROC_DIR (a private temporary
directory unless set), so a scrape of any worker adds up all of them (app/metrics.py). It is
set here, in the master, before any worker imports prometheus_client, which reads it once.
This module imports nothing of the package but app.logs (``import app`` itself is light), and
in the master app.config and app.shared_slots: the Jira budget that every worker shares.
"""

import glob
import os
import tempfile
import time

bind = os.environ.get("AVATAR_SYNC_BIND", "127.0.0.1:8080")
worker_class = "gthread"
workers = int(os.environ.get("AVATAR_SYNC_WEB_WORKERS", "2"))
# The webhook is CPU-bound: more threads only add GIL hand-offs (tests/bench: 2 threads gave
# ~2,700 acks/s with p99 ~5 ms on 2 cores, 4 threads ~2,200/s with p99 6-7.5 ms).
threads = int(os.environ.get("AVATAR_SYNC_WEB_THREADS", "2"))
preload_app = False
timeout = 30  # gthread: only the heartbeat; LDAP and Jira calls have their own timeouts
graceful_timeout = 30  # running syncs get this long to finish on restart
keepalive = 5
# Recycle workers now and then (the queue survives it), but rarely: a recycle stalls the
# requests queued behind it (a 15 s run at 2,500 acks/s that crossed 20,000 had p99 175 ms).
max_requests = 100000
max_requests_jitter = 10000
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = os.environ.get("AVATAR_SYNC_ACCESS_LOG") or None
errorlog = "-"
logger_class = "app.logs.GunicornLogger"  # the service's log format; ?token= redacted
loglevel = os.environ.get("AVATAR_SYNC_GUNICORN_LOG_LEVEL", "info")
# gunicorn 25 and later open a control socket for gunicornc unless told not to, by default in
# $HOME/.gunicorn: for the service user its state directory (the container's state volume),
# one path for every instance of that user on a host. Nothing here uses it; an admin who wants
# it names its path (0600, the master's user).
control_socket = os.environ.get("AVATAR_SYNC_GUNICORN_CONTROL_SOCKET") or None
control_socket_disable = control_socket is None


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="jira-avatar-sync-metrics-")


def on_starting(server):
    """Files of processes gone since an earlier run would add their counts in (a separate
    `jira-avatar-sync worker` sharing the directory keeps its own). The workers' shared Jira
    budget is made here, before the first fork."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        pid = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
        if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
            os.remove(path)
    server.avatar_sync_gate = _shared_jira_budget()


def on_reload(server):
    """A HUP: the new workers start while the old ones finish their syncs. With the same Jira
    limits they keep the one budget, so that the two sets together still keep to it; with new
    limits the new workers take a new budget, and for those moments both are in use."""
    gate = _shared_jira_budget()
    old = getattr(server, "avatar_sync_gate", None)
    if old is None or gate is None or old.limits != gate.limits:
        server.avatar_sync_gate = gate


def _shared_jira_budget():
    """One semaphore of jira.max_concurrency and one spacing of call starts for
    jira.max_requests_per_second for all the workers (app/shared_slots.py), so that Jira sees
    no more calls at once, nor a second, from the replica than the settings say; None with
    limits_scope = "cluster" (PostgreSQL's), or when the configuration does not load (each
    worker then stops with the reason)."""
    import multiprocessing

    from app import shared_slots
    from app.config import load_settings

    try:
        settings = load_settings()
    except Exception:  # noqa: BLE001 - the workers say what is wrong, in the service's own words
        return None
    return shared_slots.make_gate(settings, multiprocessing.get_context("fork"))


def pre_fork(server, worker):
    import multiprocessing

    from app import shared_slots

    gate = getattr(server, "avatar_sync_gate", None)
    worker.avatar_sync_slots = (
        None if gate is None else (gate, shared_slots.make_count(multiprocessing.get_context("fork")))
    )


def child_exit(server, worker):
    from prometheus_client import multiprocess  # the master: only now

    from app import shared_slots

    multiprocess.mark_process_dead(worker.pid)
    slots = getattr(worker, "avatar_sync_slots", None)
    if slots is not None:  # a worker killed while it had Jira calls in flight: theirs come back
        given = shared_slots.give_back(*slots)
        if given:
            server.log.warning("worker %s exited holding %d Jira call slots: given back", worker.pid, given)


def post_worker_init(worker):
    from app.shared_slots import CountedGate
    from app.worker import WorkerPool, sweep_threads

    services = worker.wsgi.extensions["avatar_sync"]
    if getattr(worker, "avatar_sync_slots", None) is not None:  # before any Jira call of this process
        services.jira.share_slots(CountedGate(*worker.avatar_sync_slots))
    w = services.settings.worker
    if w.start_in_web and w.threads > 0:
        pool = WorkerPool(services, w.threads, w.poll_seconds, sweep_threads(services.settings))
        worker.avatar_sync_pool = pool.start()


def worker_exit(server, worker):
    deadline = time.monotonic() + max(1, graceful_timeout - 5)
    services = worker.wsgi.extensions["avatar_sync"] if getattr(worker, "wsgi", None) else None
    pool = getattr(worker, "avatar_sync_pool", None)
    if pool is not None:  # its threads, and every sweep runner of this process (WorkerPool.stop)
        pool.stop(timeout=max(0.0, deadline - time.monotonic()))
    elif services is not None:  # no pool here: an API-started sweep's runner lets go
        services.stop_runners(max(0.0, deadline - time.monotonic()))
