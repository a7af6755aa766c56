"""Password hashing with argon2id (RFC 9106) for user sign-in (plan §6).

`argon2.PasswordHasher()` defaults are RFC 9106's low-memory profile (t=3, m=64 MiB, p=4) and
produce PHC strings (`$argon2id$v=19$m=65536,t=3,p=4$…`), so parameters travel with each hash
and `needs_rehash` can upgrade old hashes at the next successful sign-in.

Passwords are NFKC-normalised before hashing (NIST SP 800-63B §5.1.1.2): a full-width character
typed through a Chinese IME and its ASCII form are the same password.

Unknown usernames verify against a dummy hash computed with the same parameters, so the time a
failed sign-in takes does not tell whether the account exists.
"""

from __future__ import annotations

import secrets
import unicodedata

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 pre-hashes any length; the cap only bounds request sizes


class PasswordPolicyError(ValueError):
    pass


def check_password_policy(password: str) -> None:
    """NIST SP 800-63B: at least 8 characters; no composition rules."""
    length = len(unicodedata.normalize("NFKC", password))
    if length < MIN_LENGTH:
        raise PasswordPolicyError(f"password must have at least {MIN_LENGTH} characters")
    if length > MAX_LENGTH:
        raise PasswordPolicyError(f"password must have at most {MAX_LENGTH} characters")


class Passwords:
    """Hash and verify passwords. Pass a `PasswordHasher` to choose parameters (tests use cheaper
    ones to check `needs_rehash`). CPU- and memory-heavy (~64 MiB per call): async callers use
    `verify_in_thread` / `hash_in_thread`, which bound the concurrency (plan §6: 2)."""

    def __init__(self, hasher: PasswordHasher | None = None, concurrency: int = 2) -> None:
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(32))
        # at most `concurrency` hashes at once per process: 64 MiB and a core each, so a burst
        # of sign-ins queues instead of exhausting memory or starving FHIR requests
        self._limiter = anyio.CapacityLimiter(concurrency)

    async def verify_in_thread(self, password_hash: str | None, password: str) -> bool:
        """`verify` in a worker thread, behind the concurrency limit (for async routes)."""
        return await anyio.to_thread.run_sync(self.verify, password_hash, password,
                                              limiter=self._limiter)

    async def hash_in_thread(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self.hash, password, limiter=self._limiter)

    @staticmethod
    def _normalise(password: str) -> str:
        return unicodedata.normalize("NFKC", password)

    def hash(self, password: str) -> str:
        check_password_policy(password)
        return self._hasher.hash(self._normalise(password))

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True when `password` matches; `None` (unknown user) costs one full verification of a
        dummy hash and returns False. A corrupt stored hash is a mismatch, never an error."""
        target = self._dummy if password_hash is None else password_hash
        try:
            ok = self._hasher.verify(target, self._normalise(password))
        except (VerificationError, InvalidHashError):
            return False
        return ok and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than this hasher's."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return True
