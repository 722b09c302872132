"""app/known_down.py: after a failed write the next ones fail at once for a while, then one
caller at a time tries the database again."""
from __future__ import annotations

import threading

import pytest

from app.known_down import DatabaseDown, KnownDown


class Down(Exception):
    pass


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(known: KnownDown, fails: type[BaseException] | None = None) -> None:
    with known:
        if fails:
            raise fails("the write failed")


def test_after_a_failure_writes_fail_at_once_then_one_tries_and_a_success_ends_it():
    clock = Clock()
    known = KnownDown(5, (Down,), clock)
    write(known)  # healthy: tried
    with pytest.raises(Down):
        write(known, Down)
    clock.now += 4.9
    with pytest.raises(DatabaseDown, match="failed 5 s ago; not tried again yet"):
        write(known)  # not tried: it would have succeeded, and still fails
    clock.now += 0.2
    with pytest.raises(Down):
        write(known, Down)  # tried, and failed again: another 5 s
    clock.now += 4.9
    with pytest.raises(DatabaseDown):
        write(known)
    clock.now += 0.2
    write(known)  # tried, and it worked
    write(known)
    write(known)


def test_while_one_caller_tries_again_the_others_fail_at_once():
    clock = Clock()
    known = KnownDown(5, (Down,), clock)
    with pytest.raises(Down):
        write(known, Down)
    clock.now += 6
    trying, finish = threading.Event(), threading.Event()

    def slow_try():
        with known:
            trying.set()
            finish.wait(10)
    trier = threading.Thread(target=slow_try)
    trier.start()
    trying.wait(10)
    with pytest.raises(DatabaseDown):
        write(known)  # the database is being tried: not a second time at once
    finish.set()
    trier.join(10)
    write(known)  # the try succeeded


def test_a_try_that_fails_for_another_reason_lets_the_next_caller_try():
    clock = Clock()
    known = KnownDown(5, (Down,), clock)
    with pytest.raises(Down):
        write(known, Down)
    clock.now += 6
    with pytest.raises(KeyError):
        write(known, KeyError)  # not the database's failure: says nothing about it
    with pytest.raises(Down):
        write(known, Down)  # the next caller tries (and finds it still down)
    with pytest.raises(DatabaseDown):
        write(known)
