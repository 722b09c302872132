"""gunicorn settings and hooks for jira-avatar-sync (deploy/gunicorn.conf.py re-exports these).

gthread workers: the webhook only verifies, inserts one row and answers, so a few threads per
process are plenty. No preload: each worker builds its own app, so no socket or thread is
ever shared across a fork. The sync worker threads start in post_worker_init (after fork) and
are stopped, letting running jobs finish, in worker_exit.

Metrics: every worker counts in files under PROMETHEUS_MULTIPROC_DIR (a private temporary
directory unless set), so a scrape of any worker adds up all of them (app/metrics.py). It is
set here, in the master, before any worker imports prometheus_client, which reads it once.
This module imports nothing of the package but app.logs (``import app`` itself is light).
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


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="jira-avatar-sync-metrics-")


def on_starting(server):
    """Files of processes gone since an earlier run would add their counts in (a separate
    `jira-avatar-sync worker` sharing the directory keeps its own)."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        pid = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
        if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
            os.remove(path)


def child_exit(server, worker):
    from prometheus_client import multiprocess  # the master: only now, and only this

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    from app.worker import WorkerPool, sweep_threads

    services = worker.wsgi.extensions["avatar_sync"]
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
