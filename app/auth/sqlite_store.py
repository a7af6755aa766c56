"""`AuthStore` on SQLite: `<var_dir>/auth.sqlite3`, its own file, never the FHIR store (plan §3).

One connection per store, in autocommit mode, guarded by a lock so authlib's threadpool can share
it; each uvicorn worker opens its own store, and SQLite's file locking (WAL, busy timeout)
serialises writers across workers. Every check-and-change is one statement, so it is atomic
across threads and processes alike. The database and its WAL/SHM files are created mode 0600
(SQLite gives the -wal and -shm files the permissions of the database file).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.auth.store import (
    AuthCode,
    AuthRequest,
    Client,
    DuplicateError,
    Grant,
    Launch,
    Lockout,
    RefreshToken,
    RegistrationToken,
    Session,
    User,
    username_key,
)

AUTH_DB_NAME = "auth.sqlite3"
# 2: sessions, pending authorization requests, launches, grants, codes, refresh tokens. Every
# table is `CREATE TABLE IF NOT EXISTS`, so a version-1 file gains them when it is opened.
# How stale the in-memory copy of revocations made by OTHER processes may get (`is_revoked`).
REVOCATION_RECHECK_SECONDS = 0.05
SCHEMA_VERSION = 2
# A revoked grant's access tokens live at most this long after the grant's last refresh.
_ACCESS_TOKEN_MAX_SECONDS = 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS client (
    client_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('public', 'symmetric', 'asymmetric')),
    secret_hash TEXT,
    redirect_uris TEXT NOT NULL,
    launch_uri TEXT,
    jwks TEXT,
    jwks_uri TEXT,
    scope TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS user (
    username_key TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    fhir_user TEXT NOT NULL,
    access TEXT NOT NULL,
    locale TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS registration_token (
    hash TEXT PRIMARY KEY,
    uses_left INTEGER NOT NULL,
    expires REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assertion_jti (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (client_id, jti)
) WITHOUT ROWID;
-- RFC 7009 revocations: key `jti:<jti>` (one access token) or `gid:<grant id>` (a grant and
-- all its tokens), kept until the token or grant expires; `seq` orders them for readers that
-- follow new revocations incrementally.
CREATE TABLE IF NOT EXISTS revoked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS login_failure (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failure_key_at ON login_failure (key, at);
CREATE TABLE IF NOT EXISTS login_lock (
    key TEXT PRIMARY KEY,
    until REAL NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS session (
    hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    fhir_user TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_request (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    params TEXT NOT NULL,
    launch_username TEXT,
    launch_patient TEXT,
    launch_encounter TEXT,
    ehr_launch INTEGER NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS launch (
    hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    client_id TEXT NOT NULL,
    patient TEXT NOT NULL,
    encounter TEXT,
    expires REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS grant_ (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    username TEXT NOT NULL,
    fhir_user TEXT NOT NULL,
    scope TEXT NOT NULL,
    patient TEXT,
    encounter TEXT,
    ehr_launch INTEGER NOT NULL,
    session_hash TEXT,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS grant_username ON grant_ (username, created);
CREATE TABLE IF NOT EXISTS code (
    hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT,
    code_challenge TEXT,
    code_challenge_method TEXT,
    auth_time REAL NOT NULL,
    expires REAL NOT NULL,
    used_at REAL
);
CREATE TABLE IF NOT EXISTS refresh (
    hash TEXT PRIMARY KEY,
    grant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    expires REAL NOT NULL,
    used_at REAL
);
"""


def auth_db_path(var_dir: Path) -> Path:
    return var_dir / AUTH_DB_NAME


def _create_private(path: Path) -> None:
    """Create the file mode 0600 before SQLite opens it, and tighten an existing one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class SqliteAuthStore:
    """`AuthStore` on one SQLite file; `clock` is injectable for tests of expiry."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
        self._lock = threading.Lock()
        # Revoked keys, read again only when the file changed (see `is_revoked`)
        self._revoked: frozenset[str] | None = None
        self._revoked_version = -1
        self._revoked_fresh_until = 0.0  # time.monotonic() until which the copy is trusted
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # One script, one transaction: idempotent, so workers opening together are fine.
        self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}"
                               f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;")

    @classmethod
    def in_var_dir(cls, var_dir: Path, clock: Callable[[], float] = time.time
                   ) -> SqliteAuthStore:
        return cls(auth_db_path(var_dir), clock)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # clients

    def add_client(self, client: Client) -> None:
        try:
            self._run(
                "INSERT INTO client (client_id, kind, secret_hash, redirect_uris, launch_uri, "
                "jwks, jwks_uri, scope, grant_types, name_zh, name_en, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (client.client_id, client.kind, client.secret_hash,
                 json.dumps(list(client.redirect_uris)), client.launch_uri,
                 None if client.jwks is None else json.dumps(client.jwks), client.jwks_uri,
                 client.scope, json.dumps(list(client.grant_types)), client.name_zh,
                 client.name_en, client.created))
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"client_id {client.client_id!r} is already registered") \
                from exc

    @staticmethod
    def _client(row: tuple[Any, ...]) -> Client:
        (client_id, kind, secret_hash, redirect_uris, launch_uri, jwks, jwks_uri, scope,
         grant_types, name_zh, name_en, created) = row
        return Client(client_id=client_id, kind=kind, secret_hash=secret_hash,
                      redirect_uris=tuple(json.loads(redirect_uris)), launch_uri=launch_uri,
                      jwks=None if jwks is None else json.loads(jwks), jwks_uri=jwks_uri,
                      scope=scope, grant_types=tuple(json.loads(grant_types)),
                      name_zh=name_zh, name_en=name_en, created=created)

    _CLIENT_COLUMNS = ("client_id, kind, secret_hash, redirect_uris, launch_uri, jwks, jwks_uri, "
                       "scope, grant_types, name_zh, name_en, created")

    def get_client(self, client_id: str) -> Client | None:
        rows = self._all(f"SELECT {self._CLIENT_COLUMNS} FROM client WHERE client_id = ?",
                         (client_id,))
        return self._client(rows[0]) if rows else None

    def list_clients(self) -> list[Client]:
        return [self._client(r) for r in
                self._all(f"SELECT {self._CLIENT_COLUMNS} FROM client ORDER BY created, "
                          "client_id")]

    def remove_client(self, client_id: str) -> bool:
        return self._run("DELETE FROM client WHERE client_id = ?", (client_id,)).rowcount == 1

    # users

    _USER_COLUMNS = "username, password_hash, fhir_user, access, locale, disabled, created"

    @staticmethod
    def _user(row: tuple[Any, ...]) -> User:
        username, password_hash, fhir_user, access, locale, disabled, created = row
        return User(username=username, password_hash=password_hash, fhir_user=fhir_user,
                    access=access, locale=locale, disabled=bool(disabled), created=created)

    def add_user(self, user: User) -> None:
        try:
            self._run(
                "INSERT INTO user (username_key, username, password_hash, fhir_user, access, "
                "locale, disabled, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (user.key, user.username, user.password_hash, user.fhir_user, user.access,
                 user.locale, int(user.disabled), user.created))
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"username {user.username!r} is taken") from exc

    def get_user(self, username: str) -> User | None:
        rows = self._all(f"SELECT {self._USER_COLUMNS} FROM user WHERE username_key = ?",
                         (username_key(username),))
        return self._user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        return [self._user(r) for r in
                self._all(f"SELECT {self._USER_COLUMNS} FROM user ORDER BY username_key")]

    def set_user_disabled(self, username: str, disabled: bool) -> bool:
        return self._run("UPDATE user SET disabled = ? WHERE username_key = ?",
                         (int(disabled), username_key(username))).rowcount == 1

    def set_password_hash(self, username: str, password_hash: str) -> bool:
        return self._run("UPDATE user SET password_hash = ? WHERE username_key = ?",
                         (password_hash, username_key(username))).rowcount == 1

    # registration tokens

    def add_registration_token(self, token: RegistrationToken) -> None:
        self._run("INSERT INTO registration_token (hash, uses_left, expires, created) "
                  "VALUES (?, ?, ?, ?)",
                  (token.token_hash, token.uses_left, token.expires, token.created))

    def use_registration_token(self, token_hash: str, now: float) -> bool:
        return self._run("UPDATE registration_token SET uses_left = uses_left - 1 "
                         "WHERE hash = ? AND uses_left > 0 AND expires > ?",
                         (token_hash, now)).rowcount == 1

    # client assertion jti

    def remember_jti(self, client_id: str, jti: str, until: float) -> bool:
        # One statement: insert, or take over a record whose lifetime is over; a live record
        # makes the upsert's WHERE false, so nothing changes and rowcount is 0.
        return self._run(
            "INSERT INTO assertion_jti (client_id, jti, until) VALUES (?, ?, ?) "
            "ON CONFLICT (client_id, jti) DO UPDATE SET until = excluded.until "
            "WHERE assertion_jti.until < ?",
            (client_id, jti, until, self._clock())).rowcount == 1

    # revocation

    def revoke(self, *, jti: str | None = None, grant_id: str | None = None,
               until: float) -> None:
        if (jti is None) == (grant_id is None) or not (jti or grant_id):
            raise ValueError("revoke exactly one of a non-empty jti or grant_id")
        key = f"jti:{jti}" if jti is not None else f"gid:{grant_id}"
        with self._lock:
            self._db.execute("INSERT INTO revoked (key, until) VALUES (?, ?) "
                             "ON CONFLICT (key) DO UPDATE SET until = max(until, excluded.until)",
                             (key, until))
            self._revoked = None  # after the write, under the lock: no reader caches stale

    def is_revoked(self, jti: str, grant_id: str | None) -> bool:
        """Asked on every FHIR request, so answered from an in-memory copy of `revoked`.

        The copy follows this connection's own revocations at once (they drop it) and other
        connections' — another uvicorn worker, `yilian` on the command line — within
        `REVOCATION_RECHECK_SECONDS`: at most that often `PRAGMA data_version` is asked whether
        anyone else committed, and only then is the table read again. (data_version ignores a
        connection's own commits; asking it on every request cost ~10 % of an authorized read.)
        """
        revoked = self._revoked
        if revoked is None or time.monotonic() >= self._revoked_fresh_until:
            with self._lock:
                version = self._db.execute("PRAGMA data_version").fetchone()[0]
                if self._revoked is None or version != self._revoked_version:
                    self._revoked = frozenset(
                        key for (key,) in self._db.execute("SELECT key FROM revoked"))
                    self._revoked_version = version
                self._revoked_fresh_until = time.monotonic() + REVOCATION_RECHECK_SECONDS
                revoked = self._revoked
        return f"jti:{jti}" in revoked or (grant_id is not None and f"gid:{grant_id}" in revoked)

    # sessions, pending requests, launches

    def server_secret(self) -> bytes:
        self._run("INSERT OR IGNORE INTO meta (name, value) VALUES ('server_secret', ?)",
                  (secrets.token_bytes(32),))
        return bytes(self._all("SELECT value FROM meta WHERE name = 'server_secret'")[0][0])

    def add_session(self, session: Session) -> None:
        self._run("INSERT INTO session (hash, username, fhir_user, created, last_seen, expires) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
                  (session.session_hash, session.username, session.fhir_user, session.created,
                   session.last_seen, session.expires))

    def get_session(self, session_hash: str) -> Session | None:
        rows = self._all("SELECT hash, username, fhir_user, created, last_seen, expires "
                         "FROM session WHERE hash = ?", (session_hash,))
        return Session(*rows[0]) if rows else None

    def touch_session(self, session_hash: str, now: float) -> None:
        self._run("UPDATE session SET last_seen = ? WHERE hash = ?", (now, session_hash))

    def delete_session(self, session_hash: str) -> None:
        self._run("DELETE FROM session WHERE hash = ?", (session_hash,))

    def add_auth_request(self, request: AuthRequest) -> None:
        self._run("INSERT INTO auth_request (id, client_id, params, launch_username, "
                  "launch_patient, launch_encounter, ehr_launch, expires) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (request.request_id, request.client_id, json.dumps(dict(request.params)),
                   request.launch_username, request.launch_patient, request.launch_encounter,
                   int(request.ehr_launch), request.expires))

    def get_auth_request(self, request_id: str) -> AuthRequest | None:
        rows = self._all("SELECT id, client_id, params, launch_username, launch_patient, "
                         "launch_encounter, ehr_launch, expires FROM auth_request WHERE id = ?",
                         (request_id,))
        if not rows:
            return None
        rid, client_id, params, user, patient, encounter, ehr, expires = rows[0]
        return AuthRequest(request_id=rid, client_id=client_id, params=json.loads(params),
                           expires=expires, launch_username=user, launch_patient=patient,
                           launch_encounter=encounter, ehr_launch=bool(ehr))

    def delete_auth_request(self, request_id: str) -> None:
        self._run("DELETE FROM auth_request WHERE id = ?", (request_id,))

    def add_launch(self, launch: Launch) -> None:
        self._run("INSERT INTO launch (hash, username, client_id, patient, encounter, expires) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
                  (launch.launch_hash, launch.username, launch.client_id, launch.patient,
                   launch.encounter, launch.expires))

    def consume_launch(self, launch_hash: str, now: float) -> Launch | None:
        rows = self._all("UPDATE launch SET used = 1 WHERE hash = ? AND used = 0 AND expires > ? "
                         "RETURNING hash, username, client_id, patient, encounter, expires",
                         (launch_hash, now))
        return Launch(*rows[0]) if rows else None

    # grants, codes, refresh tokens

    _GRANT_COLUMNS = ("id, client_id, username, fhir_user, scope, patient, encounter, "
                      "ehr_launch, session_hash, created, expires, revoked_at")

    @staticmethod
    def _grant(row: tuple[Any, ...]) -> Grant:
        (gid, client_id, username, fhir_user, scope, patient, encounter, ehr, session_hash,
         created, expires, revoked_at) = row
        return Grant(grant_id=gid, client_id=client_id, username=username, fhir_user=fhir_user,
                     scope=scope, patient=patient, encounter=encounter, ehr_launch=bool(ehr),
                     session_hash=session_hash, created=created, expires=expires,
                     revoked_at=revoked_at)

    def add_grant(self, grant: Grant) -> None:
        self._run(f"INSERT INTO grant_ ({self._GRANT_COLUMNS}) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (grant.grant_id, grant.client_id, grant.username, grant.fhir_user,
                   grant.scope, grant.patient, grant.encounter, int(grant.ehr_launch),
                   grant.session_hash, grant.created, grant.expires, grant.revoked_at))

    def get_grant(self, grant_id: str) -> Grant | None:
        rows = self._all(f"SELECT {self._GRANT_COLUMNS} FROM grant_ WHERE id = ?", (grant_id,))
        return self._grant(rows[0]) if rows else None

    def list_grants(self, username: str, now: float) -> list[Grant]:
        return [self._grant(r) for r in self._all(
            f"SELECT {self._GRANT_COLUMNS} FROM grant_ WHERE username = ? AND revoked_at IS NULL "
            "AND expires > ? ORDER BY created DESC", (username, now))]

    def revoke_grant(self, grant_id: str, now: float) -> bool:
        with self._lock:
            self._revoked = None
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed = self._db.execute(
                    "UPDATE grant_ SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (now, grant_id)).rowcount == 1
                # the grant's access tokens are refused until the last one could expire
                self._db.execute(
                    "INSERT INTO revoked (key, until) VALUES (?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET until = max(until, excluded.until)",
                    (f"gid:{grant_id}", now + _ACCESS_TOKEN_MAX_SECONDS))
                self._db.execute("UPDATE refresh SET used_at = coalesce(used_at, ?) "
                                 "WHERE grant_id = ?", (now, grant_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return changed

    _CODE_COLUMNS = ("hash, client_id, redirect_uri, grant_id, scope, expires, auth_time, nonce, "
                     "code_challenge, code_challenge_method, used_at")

    def add_code(self, code: AuthCode) -> None:
        self._run(f"INSERT INTO code ({self._CODE_COLUMNS}) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (code.code_hash, code.client_id, code.redirect_uri, code.grant_id,
                   code.scope, code.expires, code.auth_time, code.nonce, code.code_challenge,
                   code.code_challenge_method, code.used_at))

    def consume_code(self, code_hash: str, now: float) -> tuple[AuthCode | None, bool]:
        rows = self._all(f"UPDATE code SET used_at = ? WHERE hash = ? AND used_at IS NULL "
                         f"AND expires > ? RETURNING {self._CODE_COLUMNS}",
                         (now, code_hash, now))
        if rows:
            return AuthCode(*rows[0]), True
        rows = self._all(f"SELECT {self._CODE_COLUMNS} FROM code WHERE hash = ? "
                         "AND used_at IS NOT NULL", (code_hash,))
        return (AuthCode(*rows[0]), False) if rows else (None, False)

    def add_refresh_token(self, token: RefreshToken) -> None:
        self._run("INSERT INTO refresh (hash, grant_id, client_id, expires, used_at) "
                  "VALUES (?, ?, ?, ?, ?)",
                  (token.token_hash, token.grant_id, token.client_id, token.expires,
                   token.used_at))

    def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        rows = self._all("SELECT hash, grant_id, client_id, expires, used_at FROM refresh "
                         "WHERE hash = ?", (token_hash,))
        return RefreshToken(*rows[0]) if rows else None

    def use_refresh_token(self, token_hash: str, now: float) -> bool:
        return self._run("UPDATE refresh SET used_at = ? WHERE hash = ? AND used_at IS NULL",
                         (now, token_hash)).rowcount == 1

    # login throttle

    def add_login_failure(self, key: str, at: float) -> None:
        self._run("INSERT INTO login_failure (key, at) VALUES (?, ?)", (key, at))

    def login_failures_since(self, key: str, since: float) -> list[float]:
        return [r[0] for r in self._all(
            "SELECT at FROM login_failure WHERE key = ? AND at >= ? ORDER BY at", (key, since))]

    def clear_login_failures(self, key: str) -> None:
        self._run("DELETE FROM login_failure WHERE key = ?", (key,))

    def get_lockout(self, key: str) -> Lockout | None:
        rows = self._all("SELECT key, until, seconds FROM login_lock WHERE key = ?", (key,))
        return Lockout(*rows[0]) if rows else None

    def put_lockout(self, lockout: Lockout) -> None:
        self._run("INSERT INTO login_lock (key, until, seconds) VALUES (?, ?, ?) "
                  "ON CONFLICT (key) DO UPDATE SET until = excluded.until, "
                  "seconds = excluded.seconds", (lockout.key, lockout.until, lockout.seconds))

    def clear_lockout(self, key: str) -> None:
        self._run("DELETE FROM login_lock WHERE key = ?", (key,))

    def purge(self, now: float, failure_window: float) -> int:
        with self._lock:
            self._revoked = None
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = sum(self._db.execute(sql, params).rowcount for sql, params in (
                    ("DELETE FROM registration_token WHERE expires <= ? OR uses_left <= 0",
                     (now,)),
                    ("DELETE FROM assertion_jti WHERE until < ?", (now,)),
                    ("DELETE FROM revoked WHERE until < ?", (now,)),
                    ("DELETE FROM login_failure WHERE at < ?", (now - failure_window,)),
                    ("DELETE FROM login_lock WHERE until < ?", (now - failure_window,)),
                    ("DELETE FROM session WHERE expires < ?", (now,)),
                    ("DELETE FROM auth_request WHERE expires < ?", (now,)),
                    ("DELETE FROM launch WHERE expires < ?", (now,)),
                    # used codes are kept while they live, so a replay is still recognised
                    ("DELETE FROM code WHERE expires < ?", (now - _ACCESS_TOKEN_MAX_SECONDS,)),
                    ("DELETE FROM refresh WHERE expires < ?", (now,)),
                    ("DELETE FROM grant_ WHERE expires < ?", (now - _ACCESS_TOKEN_MAX_SECONDS,)),
                ))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    def close(self) -> None:
        with self._lock:
            self._db.close()
