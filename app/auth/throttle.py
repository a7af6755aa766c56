"""Sign-in throttling: failure windows per username and per client address (plan §6).

- Per username: 5 failures within 15 minutes lock the account's sign-in for 60 s; each further
  lock while failures keep coming doubles, up to 15 minutes. The lock length falls back to 60 s
  after a successful sign-in, or once 15 minutes pass after a lock ends without a new one.
  After a lock the count starts again, so each lock costs an attacker another 5 guesses.
- Per address: 50 failures within 15 minutes refuse further attempts from that address until
  the oldest of them leaves the window (sliding window). IPv6 addresses count per /64, the
  block one subscriber usually gets.

Counts live in the `AuthStore`, so every worker process sees the same windows. The sign-in page
shows one message for wrong password, unknown user and lock-out; failures of unknown
usernames are counted like any other, which also hides whether an account exists.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.auth.store import AuthStore, Lockout, username_key

WINDOW_SECONDS = 15 * 60
USER_LIMIT = 5
ADDRESS_LIMIT = 50
FIRST_LOCK_SECONDS = 60.0
MAX_LOCK_SECONDS = 15 * 60.0


def address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "addr:" + address  # e.g. a unix socket peer; counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"addr:{ip.ipv4_mapped}"
        return f"addr:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return f"addr:{ip}"


def user_key(username: str) -> str:
    return "user:" + username_key(username)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0  # seconds until an attempt may be made again


class LoginThrottle:
    def __init__(self, store: AuthStore, clock: Callable[[], float] = time.time, *,
                 window: float = WINDOW_SECONDS, user_limit: int = USER_LIMIT,
                 address_limit: int = ADDRESS_LIMIT, first_lock: float = FIRST_LOCK_SECONDS,
                 max_lock: float = MAX_LOCK_SECONDS) -> None:
        self._store = store
        self._clock = clock
        self.window = window
        self.user_limit = user_limit
        self.address_limit = address_limit
        self.first_lock = first_lock
        self.max_lock = max_lock

    def check(self, username: str, address: str) -> Verdict:
        """May this attempt be verified at all? Call before touching the password."""
        now = self._clock()
        wait = 0.0
        lock = self._store.get_lockout(user_key(username))
        if lock is not None and lock.until > now:
            wait = lock.until - now
        recent = self._store.login_failures_since(address_key(address), now - self.window)
        if len(recent) >= self.address_limit:
            # the attempt is allowed again when enough failures have left the window
            oldest_to_expire = recent[len(recent) - self.address_limit]
            wait = max(wait, oldest_to_expire + self.window - now)
        return Verdict(wait <= 0, max(wait, 0.0))

    def failure(self, username: str, address: str) -> Verdict:
        """Record a failed attempt; returns the verdict for the next one."""
        now = self._clock()
        ukey = user_key(username)
        self._store.add_login_failure(ukey, now)
        self._store.add_login_failure(address_key(address), now)
        if len(self._store.login_failures_since(ukey, now - self.window)) >= self.user_limit:
            previous = self._store.get_lockout(ukey)
            if previous is not None and now - previous.until < self.window:
                seconds = min(previous.seconds * 2, self.max_lock)
            else:
                seconds = self.first_lock
            self._store.put_lockout(Lockout(ukey, now + seconds, seconds))
            self._store.clear_login_failures(ukey)
        return self.check(username, address)

    def success(self, username: str) -> None:
        """A successful sign-in forgets the username's failures and lock history (the address
        window is kept: one good account must not unlock guessing at others)."""
        ukey = user_key(username)
        self._store.clear_login_failures(ukey)
        self._store.clear_lockout(ukey)
