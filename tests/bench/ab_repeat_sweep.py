"""Benchmark: repeat sweeps of two code trees, interleaved on one seeded rig.

    .venv/bin/python -m tests.bench.ab_repeat_sweep OLD_TREE NEW_TREE [--users 10000]
                     [--jira-version 11.0.0] [--rounds 4] [--latency-ms 10] [--no-photos]

A repeat sweep (nothing changed) takes a few seconds, and the machines here drift by more
than a change is worth between two bench_sweep runs minutes apart. This seeds slapd and the
emulator once, runs one first sweep with the first tree, then repeat sweeps alternating the
trees (ABBA order), each a fresh `jira-avatar-sync sweep` process with PYTHONPATH set to the
tree (a `git worktree add` of the commit to compare). Each repeat sweep must make no Jira
write. Prints each run's wall and CPU seconds (stderr) and the times per tree (stdout, JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from tests import photos
from tests.bench.bench_sweep import run_sweep, write_config
from tests.jira_emulator import EmulatorServer, JiraState
from tests.rig import slapd as slapd_rig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, help="two checkouts of the project (PYTHONPATH of each run)")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--jira-version", default="11.0.0")
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4, help="repeat sweeps per tree")
    parser.add_argument("--no-photos", action="store_true", help="users without photos (for 100,000)")
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees]
    work = Path(tempfile.mkdtemp(prefix="avatar-ab-bench-"))
    ldap = slapd_rig.Slapd.running(work / "slapd")
    try:
        people = ldap.add_ou("people")
        names = [f"user{i:06d}" for i in range(args.users)]
        photo = None if args.no_photos else photos.photo(96, 96)
        ldap.add_users(people, [(n, photo) for n in names])
        state = JiraState(version=args.jira_version)
        state.add_account("avatar-sync", "pw", admin=True)
        for n in names:
            state.add_user(n)
        with EmulatorServer(state) as jira:
            config = write_config(work, f"sqlite:///{work}/state.db", jira.url, ldap, people, 8, 8)
            state.latency = args.latency_ms / 1000
            os.environ["PYTHONPATH"] = trees[0]
            run_sweep(config, slapd_pid=ldap.pid)
            times: dict[str, list[float]] = {t: [] for t in trees}
            for r in range(args.rounds):
                for tree in trees if r % 2 == 0 else trees[::-1]:
                    os.environ["PYTHONPATH"] = tree
                    writes = state.writes()
                    seconds = run_sweep(config, slapd_pid=ldap.pid)[0]
                    if state.writes() != writes:
                        raise SystemExit(f"a repeat sweep of {tree} wrote to Jira")
                    times[tree].append(round(seconds, 2))
        print(json.dumps(times, indent=2))
    finally:
        ldap.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
