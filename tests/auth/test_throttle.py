"""Sign-in throttle: per-username lock-outs that double, per-address sliding window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.auth.sqlite_store import SqliteAuthStore
from app.auth.throttle import LoginThrottle, address_key

ADDR = "203.0.113.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1_795_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteAuthStore]:
    s = SqliteAuthStore(tmp_path / "auth.sqlite3")
    yield s
    s.close()


@pytest.fixture
def throttle(store: SqliteAuthStore, clock: Clock) -> LoginThrottle:
    return LoginThrottle(store, clock)


def _fail(throttle: LoginThrottle, n: int, username: str = "wangfang",
          address: str = ADDR) -> None:
    for _ in range(n):
        assert throttle.check(username, address).allowed
        throttle.failure(username, address)


def test_five_failures_lock_the_username_for_sixty_seconds(throttle: LoginThrottle,
                                                           clock: Clock) -> None:
    _fail(throttle, 4)
    assert throttle.check("wangfang", ADDR).allowed
    verdict = throttle.failure("wangfang", ADDR)
    assert not verdict.allowed and verdict.retry_after == pytest.approx(60)
    # the lock is on the username, whatever its spelling or the address
    assert not throttle.check("WANGFANG", "198.51.100.1").allowed
    assert throttle.check("lina", ADDR).allowed
    clock.now += 59
    assert not throttle.check("wangfang", ADDR).allowed
    clock.now += 1
    assert throttle.check("wangfang", ADDR).allowed


def test_failures_spread_over_more_than_fifteen_minutes_do_not_lock(
        throttle: LoginThrottle, clock: Clock) -> None:
    for _ in range(10):
        _fail(throttle, 1)
        clock.now += 4 * 60  # 4 per 15 min at most
    assert throttle.check("wangfang", ADDR).allowed


def test_repeated_lockouts_double_up_to_fifteen_minutes(throttle: LoginThrottle,
                                                        clock: Clock) -> None:
    locks = []
    for _ in range(7):
        _fail(throttle, 4)
        verdict = throttle.failure("wangfang", ADDR)
        locks.append(round(verdict.retry_after))
        clock.now += verdict.retry_after
    assert locks == [60, 120, 240, 480, 900, 900, 900]


def test_lock_length_falls_back_after_a_quiet_window(throttle: LoginThrottle,
                                                     clock: Clock) -> None:
    _fail(throttle, 5)
    clock.now += 60
    _fail(throttle, 5)
    assert throttle.check("wangfang", ADDR).retry_after == pytest.approx(120)
    clock.now += 120 + 15 * 60  # 15 minutes without a lock after this one ended
    _fail(throttle, 5)
    assert throttle.check("wangfang", ADDR).retry_after == pytest.approx(60)


def test_success_forgets_failures_and_lock_history(throttle: LoginThrottle,
                                                   clock: Clock) -> None:
    _fail(throttle, 5)
    clock.now += 60
    _fail(throttle, 4)
    throttle.success("WangFang")
    throttle.failure("wangfang", ADDR)
    assert throttle.check("wangfang", ADDR).allowed  # the count started again
    _fail(throttle, 3)
    throttle.failure("wangfang", ADDR)
    assert throttle.check("wangfang", ADDR).retry_after == pytest.approx(60)  # not 120


def test_unknown_usernames_are_counted_like_any_other(throttle: LoginThrottle) -> None:
    _fail(throttle, 5, username="no-such-user")
    assert not throttle.check("no-such-user", ADDR).allowed


def test_fifty_failures_from_one_address_block_it_in_a_sliding_window(
        throttle: LoginThrottle, clock: Clock) -> None:
    for i in range(50):
        _fail(throttle, 1, username=f"patient{i:03d}")  # 50 usernames, none locked
        clock.now += 1
    verdict = throttle.check("patient999", ADDR)
    assert not verdict.allowed
    # the oldest failure (at t0) leaves the 15-minute window at t0 + 900; now = t0 + 50
    assert verdict.retry_after == pytest.approx(850)
    assert throttle.check("patient999", "198.51.100.1").allowed  # other addresses unaffected
    clock.now += 849
    assert not throttle.check("patient999", ADDR).allowed
    clock.now += 1
    assert throttle.check("patient999", ADDR).allowed


def test_ipv6_addresses_count_per_slash_64() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:203.0.113.7") == address_key("203.0.113.7")
    assert address_key("203.0.113.7") != address_key("203.0.113.8")


def test_throttle_state_is_shared_through_the_store(tmp_path: Path, clock: Clock) -> None:
    # two workers, two connections, one file
    a = SqliteAuthStore(tmp_path / "auth.sqlite3")
    b = SqliteAuthStore(tmp_path / "auth.sqlite3")
    try:
        _fail(LoginThrottle(a, clock), 3)
        _fail(LoginThrottle(b, clock), 2)
        assert not LoginThrottle(a, clock).check("wangfang", ADDR).allowed
    finally:
        a.close()
        b.close()
