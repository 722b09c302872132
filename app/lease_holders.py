"""Who holds a lease, and whether that process still runs.

A job's lease names its holder "host:namespace:pid:start:thread" (LoginQueue.owner). A process
may judge the PIDs of its own host name, kernel boot and PID namespace only: two containers of
one pod share a host name and the database, not their PIDs. The start time tells a killed
process from a new one given its PID (a process restarted in the same namespace).
"""

from __future__ import annotations

import hashlib
import os

UNKNOWN_NAMESPACE = "?"  # no /proc: no PID can be judged, every lease lapses


def alive(holder: str) -> bool:
    """Whether the process named in a lease of this host and namespace still runs (``holder``:
    the owner after that prefix, "pid:start:thread"): its PID exists, is no zombie, and (where
    the lease records it) started when that process did, so that a new process given the
    same PID is not taken for it."""
    fields = holder.split(":")
    try:
        pid = int(fields[0])
    except ValueError:
        return True  # not a lease this code wrote: left to lapse
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _stat(pid)
    if stat is None:
        return True  # gone meanwhile, or no /proc: judged at the next look
    # A worker killed with its master stays a zombie until someone reaps it, and a zombie
    # answers kill(0): its job would wait for the lease to expire instead of being taken back.
    if stat[0] in (b"Z", b"X"):
        return False
    recorded = fields[1] if len(fields) == 3 else "0"
    return recorded == "0" or recorded == stat[19].decode()


def namespace() -> str:
    """A short name for the PIDs this process can see: its kernel's boot and its PID
    namespace (UNKNOWN_NAMESPACE where /proc cannot tell)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        pids = os.readlink("/proc/self/ns/pid")
    except OSError:
        return UNKNOWN_NAMESPACE
    return hashlib.sha256(f"{boot} {pids}".encode()).hexdigest()[:8]


def started(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (/proc/<pid>/stat, field 22)."""
    stat = _stat(pid)
    return stat[19].decode() if stat is not None else None


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command's name (the state first); None when
    it cannot be read. The name, in parentheses, may itself hold spaces and ")"."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None
