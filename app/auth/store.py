"""Auth state: the `AuthStore` protocol and its records (build plan §3, docs/smart-auth-design.md).

Auth state lives apart from the FHIR store (secrets, password hashes and sessions must never be
reachable through FHIR interactions or travel with FHIR backups). The protocol is written so that
each method maps 1:1 onto one SQLite statement and one MongoDB operation: every "check and
change" step is a single atomic primitive (`remember_jti`, `use_registration_token`), never a
read followed by a write in the caller.

Secrets (client secrets, registration tokens) are stored only as SHA-256 hex digests of
256-bit random values: a fast hash is enough for high-entropy secrets (nothing to brute-force),
unlike passwords, which get argon2id (`passwords.py`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ClientKind = Literal["public", "symmetric", "asymmetric"]
CLIENT_KINDS: tuple[ClientKind, ...] = ("public", "symmetric", "asymmetric")
Access = Literal["compartment", "all"]

# FHIR id (R4 `id` datatype): 1-64 of [A-Za-z0-9\-.].
_FHIR_USER = re.compile(r"(Patient|Practitioner)/[A-Za-z0-9\-.]{1,64}")
_USERNAME_MAX = 64


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a high-entropy secret (client secret, registration token)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def username_key(username: str) -> str:
    """The lookup key of a username: NFKC, case-folded, NFKC again (Unicode's NFKC_Casefold
    idea), so `ZHANG`, `zhang` and full-width `ｚｈａｎｇ` are one account."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())


def check_username(username: str) -> str:
    """Return the username (NFKC-normalised for display) or raise ValueError saying why."""
    name = unicodedata.normalize("NFKC", username)
    if not name:
        raise ValueError("username is empty")
    if len(name) > _USERNAME_MAX:
        raise ValueError(f"username is longer than {_USERNAME_MAX} characters")
    for ch in name:
        if ch.isspace() or unicodedata.category(ch).startswith("C"):
            raise ValueError(f"username contains a space or control character (U+{ord(ch):04X})")
    return name


def check_fhir_user(fhir_user: str) -> str:
    if not _FHIR_USER.fullmatch(fhir_user):
        raise ValueError(f"fhir_user {fhir_user!r} is not Patient/<id> or Practitioner/<id>")
    return fhir_user


@dataclass(frozen=True)
class Client:
    """A registered OAuth client (SMART app or backend service).

    `redirect_uris` are compared as exact strings (no normalisation: the registered string is
    the truth). `scope` is the ceiling: requested scopes outside it are dropped. `secret_hash`
    is set only for `symmetric` clients, `jwks` / `jwks_uri` only for `asymmetric` ones.
    """

    client_id: str
    kind: ClientKind
    name_zh: str
    name_en: str
    redirect_uris: tuple[str, ...] = ()
    scope: str = ""
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    secret_hash: str | None = None
    launch_uri: str | None = None
    jwks: Mapping[str, Any] | None = field(default=None, compare=False)
    jwks_uri: str | None = None
    created: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in CLIENT_KINDS:
            raise ValueError(f"client kind {self.kind!r} is not one of {', '.join(CLIENT_KINDS)}")
        if (self.kind == "symmetric") != (self.secret_hash is not None):
            raise ValueError("a secret hash is required for symmetric clients and only for them")
        if self.kind != "asymmetric" and (self.jwks is not None or self.jwks_uri is not None):
            raise ValueError("jwks / jwks_uri belong to asymmetric clients only")
        if self.kind == "asymmetric" and self.jwks is None and self.jwks_uri is None:
            raise ValueError("an asymmetric client needs jwks or jwks_uri")


@dataclass(frozen=True)
class User:
    """A person who signs in: a patient (`Patient/…`) or clinical staff (`Practitioner/…`).

    `username` is kept as entered (NFKC) for display; lookups use `username_key`. `access` is
    what `user/` scopes mean for them: a patient's own compartment, or `all` for hospital
    clinical staff until a care-team policy lands.
    """

    username: str
    password_hash: str
    fhir_user: str
    locale: str = "zh"
    disabled: bool = False
    access: Access = "compartment"
    created: float = 0.0

    def __post_init__(self) -> None:
        check_username(self.username)
        check_fhir_user(self.fhir_user)
        if self.access not in ("compartment", "all"):
            raise ValueError(f"access {self.access!r} is not 'compartment' or 'all'")

    @property
    def key(self) -> str:
        return username_key(self.username)


@dataclass(frozen=True)
class RegistrationToken:
    """An initial access token for RFC 7591 dynamic registration, stored hashed."""

    token_hash: str
    uses_left: int
    expires: float
    created: float = 0.0


@dataclass(frozen=True)
class Lockout:
    """A login lock on one throttle key: refused until `until`; `seconds` is the length of the
    lock, doubled for the next one while failures keep coming (`throttle.py`)."""

    key: str
    until: float
    seconds: float


@dataclass(frozen=True)
class Session:
    """A signed-in browser (plan §6). The cookie holds a 256-bit random id; the store keeps only
    its SHA-256 (`session_hash`), so a copy of the auth store cannot be replayed as cookies."""

    session_hash: str
    username: str
    fhir_user: str
    created: float
    last_seen: float
    expires: float  # absolute end (12 h); the idle limit is checked against `last_seen`


@dataclass(frozen=True)
class AuthRequest:
    """A validated authorization request waiting for the user's sign-in and decision
    (RFC 6749 §4.1.1): the request parameters as sent, and the EHR launch context when the
    request carried a `launch` id. Lives 10 minutes."""

    request_id: str
    client_id: str
    params: Mapping[str, str]
    expires: float
    launch_username: str | None = None
    launch_patient: str | None = None
    launch_encounter: str | None = None
    ehr_launch: bool = False


@dataclass(frozen=True)
class Launch:
    """An EHR launch (SMART App Launch 2.2 §EHR launch): bound to the practitioner who started
    it, the app and the patient/encounter in context; single use, 5 minutes. Stored hashed."""

    launch_hash: str
    username: str
    client_id: str
    patient: str
    encounter: str | None
    expires: float


@dataclass(frozen=True)
class Grant:
    """What a user approved for a client: the unit that codes, refresh tokens and access
    tokens belong to, and the unit of revocation (`gid` claim)."""

    grant_id: str
    client_id: str
    username: str
    fhir_user: str
    scope: str
    created: float
    expires: float  # the longest a refresh token of this grant may live
    patient: str | None = None
    encounter: str | None = None
    ehr_launch: bool = False
    session_hash: str | None = None  # `online_access`: the grant dies with this session
    revoked_at: float | None = None


@dataclass(frozen=True)
class AuthCode:
    """An authorization code (RFC 6749 §4.1.2), stored as SHA-256, single use."""

    code_hash: str
    client_id: str
    redirect_uri: str
    grant_id: str
    scope: str
    expires: float
    auth_time: float
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    used_at: float | None = None


@dataclass(frozen=True)
class RefreshToken:
    """A refresh token (RFC 6749 §6), stored as SHA-256; rotated on every use (`used_at`)."""

    token_hash: str
    grant_id: str
    client_id: str
    expires: float
    used_at: float | None = None


class DuplicateError(ValueError):
    """A record with that id (client_id, username) already exists."""


class AuthStore(Protocol):
    """Storage of auth state. Synchronous: callers in async code use a threadpool (authlib's
    server is synchronous too). Times are Unix seconds."""

    # clients (RFC 7591 registry)
    def add_client(self, client: Client) -> None:
        """Insert; raise DuplicateError when the client_id exists."""

    def get_client(self, client_id: str) -> Client | None: ...

    def list_clients(self) -> Sequence[Client]: ...

    def remove_client(self, client_id: str) -> bool:
        """Delete; False when there was no such client."""

    # users
    def add_user(self, user: User) -> None:
        """Insert; raise DuplicateError when `username_key` is taken."""

    def get_user(self, username: str) -> User | None:
        """Look up by `username_key(username)`."""

    def list_users(self) -> Sequence[User]: ...

    def set_user_disabled(self, username: str, disabled: bool) -> bool: ...

    def set_password_hash(self, username: str, password_hash: str) -> bool: ...

    # RFC 7591 initial access tokens
    def add_registration_token(self, token: RegistrationToken) -> None: ...

    def use_registration_token(self, token_hash: str, now: float) -> bool:
        """Atomically take one use of an unexpired token with uses left; False otherwise."""

    # replay protection for client assertions (RFC 7523 §3 `jti`)
    def remember_jti(self, client_id: str, jti: str, until: float) -> bool:
        """Insert-or-fail: True for the first use of (client, jti) while an earlier record is
        still live, False for a replay. Concurrent callers: exactly one gets True."""

    # revocation (RFC 7009): an access token by its `jti`, or a whole grant by its id
    def revoke(self, *, jti: str | None = None, grant_id: str | None = None,
               until: float) -> None:
        """Record the revocation of exactly one of an access token (`jti`) or a grant
        (`grant_id`, all its tokens) until `until` (when the token or grant would have expired
        anyway; `purge` forgets it then). Idempotent; a later `until` extends the record."""

    def is_revoked(self, jti: str, grant_id: str | None) -> bool:
        """True when the token `jti` or its grant has been revoked (`bearer.RevokedCheck`)."""

    # browser sessions, pending authorization requests, EHR launches (plan §3, §6)
    def server_secret(self) -> bytes:
        """A 256-bit secret shared by every worker (CSRF tokens); made on first use."""

    def add_session(self, session: Session) -> None: ...

    def get_session(self, session_hash: str) -> Session | None: ...

    def touch_session(self, session_hash: str, now: float) -> None: ...

    def delete_session(self, session_hash: str) -> None: ...

    def add_auth_request(self, request: AuthRequest) -> None: ...

    def get_auth_request(self, request_id: str) -> AuthRequest | None: ...

    def delete_auth_request(self, request_id: str) -> None: ...

    def add_launch(self, launch: Launch) -> None: ...

    def consume_launch(self, launch_hash: str, now: float) -> Launch | None:
        """Atomically take an unexpired, unused launch; None when there is none (or it was
        taken already). Concurrent callers: exactly one gets it."""

    # grants, codes, refresh tokens (RFC 6749 §4.1, §6)
    def add_grant(self, grant: Grant) -> None: ...

    def get_grant(self, grant_id: str) -> Grant | None: ...

    def list_grants(self, username: str, now: float) -> Sequence[Grant]:
        """The user's unrevoked, unexpired grants, newest first."""

    def revoke_grant(self, grant_id: str, now: float) -> bool:
        """Mark the grant revoked and record `gid:` in the revocation list (its access tokens
        stop working); False when it was unknown or revoked already."""

    def add_code(self, code: AuthCode) -> None: ...

    def consume_code(self, code_hash: str, now: float) -> tuple[AuthCode | None, bool]:
        """Atomically mark a code used: `(code, True)` for the first use of an unexpired
        code; `(code, False)` when it had been used before (a replay: the caller revokes its
        grant); `(None, False)` when unknown or expired."""

    def add_refresh_token(self, token: RefreshToken) -> None: ...

    def get_refresh_token(self, token_hash: str) -> RefreshToken | None: ...

    def use_refresh_token(self, token_hash: str, now: float) -> bool:
        """Atomically mark it used (rotation); False when it was used already."""

    # login throttle (`throttle.py`)
    def add_login_failure(self, key: str, at: float) -> None: ...

    def login_failures_since(self, key: str, since: float) -> Sequence[float]:
        """Failure times for `key` at or after `since`, oldest first."""

    def clear_login_failures(self, key: str) -> None: ...

    def get_lockout(self, key: str) -> Lockout | None: ...

    def put_lockout(self, lockout: Lockout) -> None: ...

    def clear_lockout(self, key: str) -> None: ...

    def purge(self, now: float, failure_window: float) -> int:
        """Delete expired rows (registration tokens, jtis, revocations, old failures and
        lockouts); the number deleted."""

    def close(self) -> None: ...
