"""A server the tests start does not outlive a pytest killed without its teardown
(tests/rig/children.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import wait_until
from tests.rig.children import DIE_WITH_PARENT

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([*sys.argv[1:], "sleep", "60"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie is as good as gone
    except FileNotFoundError:
        return False


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except FileNotFoundError:
        return ""


@pytest.mark.skipif(not DIE_WITH_PARENT, reason="util-linux's setpriv is not installed")
def test_a_server_started_by_the_tests_ends_when_its_starter_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, *DIE_WITH_PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    # setpriv arms the signal, then becomes the server: a parent killed before that is not a case
    wait_until(lambda: _command(child) == "sleep", 5, "setpriv to exec the child")
    parent.kill()  # kill -9: no teardown, no atexit
    parent.wait()
    wait_until(lambda: not _alive(child), 5, "the child to end with its parent")


def test_without_the_guard_the_child_would_outlive_its_parent():
    """The test above can fail: a plain child goes on after its parent's kill -9."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    try:
        assert _alive(child)
    finally:
        os.kill(child, 9)
