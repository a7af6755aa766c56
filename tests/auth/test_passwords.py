"""argon2id password hashing: PHC strings, verification, rehash, no timing oracle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

import anyio
import pytest
from argon2 import PasswordHasher

from app.auth.passwords import PasswordPolicyError, Passwords

PASSWORD = "Xiehe-2026-内科"


@pytest.fixture(scope="module")
def passwords() -> Passwords:
    return Passwords()


def _params(phc: str) -> str:
    # $argon2id$v=19$m=65536,t=3,p=4$salt$hash -> "argon2id$v=19$m=65536,t=3,p=4"
    return "$".join(phc.split("$")[1:4])


def test_hash_is_argon2id_phc_with_rfc9106_low_memory_parameters(passwords: Passwords) -> None:
    phc = passwords.hash(PASSWORD)
    assert _params(phc) == "argon2id$v=19$m=65536,t=3,p=4"
    assert PASSWORD not in phc
    assert passwords.hash(PASSWORD) != phc  # fresh salt each time


def test_verify_accepts_the_password_and_refuses_others(passwords: Passwords) -> None:
    phc = passwords.hash(PASSWORD)
    assert passwords.verify(phc, PASSWORD) is True
    for wrong in ("Xiehe-2026-外科", PASSWORD.upper(), PASSWORD + " ", "", PASSWORD[:-1]):
        assert passwords.verify(phc, wrong) is False, wrong


def test_full_width_input_is_the_same_password(passwords: Passwords) -> None:
    # NFKC: what a Chinese IME in full-width mode types equals the ASCII password
    phc = passwords.hash("Xiehe2026")
    assert passwords.verify(phc, "Ｘｉｅｈｅ２０２６") is True


def test_corrupt_stored_hash_is_a_mismatch_not_an_error(passwords: Passwords) -> None:
    assert passwords.verify("not a hash", PASSWORD) is False
    assert passwords.verify("$argon2id$v=19$m=65536,t=3,p=4$xx$yy", PASSWORD) is False
    assert passwords.needs_rehash("not a hash") is True


def test_weaker_hash_needs_rehash_and_current_one_does_not(passwords: Passwords) -> None:
    old = Passwords(PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    weak = old.hash(PASSWORD)
    assert passwords.verify(weak, PASSWORD) is True  # parameters travel with the hash
    assert passwords.needs_rehash(weak) is True
    assert passwords.needs_rehash(passwords.hash(PASSWORD)) is False


@pytest.mark.parametrize("password", ["", "short", "1234567", "１２３４５６７"])
def test_passwords_shorter_than_eight_characters_are_refused(passwords: Passwords,
                                                             password: str) -> None:
    with pytest.raises(PasswordPolicyError, match="at least 8"):
        passwords.hash(password)


def test_chinese_passphrase_of_eight_characters_is_accepted(passwords: Passwords) -> None:
    phc = passwords.hash("白云黄鹤长江大桥")
    assert passwords.verify(phc, "白云黄鹤长江大桥")


def _fastest(fn: Callable[[], object], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_unknown_user_verify_takes_a_real_hash_computation(passwords: Passwords) -> None:
    known = passwords.hash(PASSWORD)
    assert passwords.verify(None, PASSWORD) is False
    # the dummy hash is made with the same parameters, so it costs the same to verify
    assert _params(passwords._dummy) == _params(known)
    unknown_user = _fastest(lambda: passwords.verify(None, "Guess-123456"))
    wrong_password = _fastest(lambda: passwords.verify(known, "Guess-123456"))
    assert unknown_user > 0.005  # m=64 MiB, t=3 takes tens of milliseconds, never microseconds
    assert unknown_user > 0.5 * wrong_password, (unknown_user, wrong_password)


class CountingHasher(PasswordHasher):
    """argon2's own hasher, recording how many verifications run at once."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


def test_async_verify_runs_at_most_two_hashes_at_once() -> None:
    hasher = CountingHasher()
    pw = Passwords(hasher)
    known = pw.hash(PASSWORD)

    async def main() -> list[bool]:
        results: list[bool] = [False] * 6

        async def one(i: int) -> None:
            results[i] = await pw.verify_in_thread(known if i % 2 else None,
                                                   PASSWORD if i % 3 else "wrong-password")

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
        return results

    results = anyio.run(main)
    assert results == [False, True, False, False, False, True]
    assert hasher.most == 2
    assert anyio.run(pw.verify_in_thread, anyio.run(pw.hash_in_thread, PASSWORD), PASSWORD)
