"""The SQLite AuthStore on a real file: records, lookups, atomic primitives, file modes."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.auth.sqlite_store import REVOCATION_RECHECK_SECONDS, SqliteAuthStore, auth_db_path
from app.auth.store import (
    Client,
    DuplicateError,
    Lockout,
    RegistrationToken,
    User,
    hash_secret,
    username_key,
)
from app.config import Settings

# A PHC string of the shape argon2 writes; the store treats it as opaque text.
PHC = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g"


class Clock:
    def __init__(self, now: float = 1_795_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SqliteAuthStore]:
    s = SqliteAuthStore.in_var_dir(tmp_path / "var", clock)
    yield s
    s.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_auth_store_is_its_own_file_in_var_dir_created_mode_0600(tmp_path: Path) -> None:
    var = tmp_path / "var"
    s = SqliteAuthStore.in_var_dir(var)
    try:
        path = auth_db_path(var)
        assert path == var / "auth.sqlite3"
        assert path != Settings(var_dir=var).sqlite_path
        assert _mode(path) == 0o600
        s.add_user(User("wangfang", PHC, "Patient/pat-000001"))  # makes SQLite write the WAL
        for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert extra.exists()
            assert _mode(extra) == 0o600, extra
        journal = s._run("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"
    finally:
        s.close()


def test_existing_auth_file_with_loose_mode_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "auth.sqlite3"
    path.touch()
    os.chmod(path, 0o644)
    SqliteAuthStore(path).close()
    assert _mode(path) == 0o600


def test_schema_is_created_on_open_and_reopening_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "auth.sqlite3"
    s = SqliteAuthStore(path)
    s.add_user(User("李娜", PHC, "Practitioner/prac-0001", access="all"))
    s.close()
    again = SqliteAuthStore(path)
    try:
        user = again.get_user("李娜")
        assert user is not None and user.access == "all"
        tables = {r[0] for r in again._all("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"client", "user", "registration_token", "assertion_jti", "login_failure",
                "login_lock"} <= tables
    finally:
        again.close()


def test_client_round_trips_every_field(store: SqliteAuthStore) -> None:
    jwks = {"keys": [{"kty": "EC", "crv": "P-384", "kid": "insurer-2026", "x": "AAAA",
                      "y": "BBBB"}]}
    backend = Client(client_id="pingan-insurer", kind="asymmetric", name_zh="平安医保结算",
                     name_en="Ping An claims", scope="system/Patient.rs system/Claim.rs",
                     grant_types=("client_credentials",), jwks=jwks, created=1.5)
    app = Client(client_id="jiankang-zhushou", kind="symmetric", name_zh="健康助手",
                 name_en="Health helper",
                 redirect_uris=("https://app.jiankang.cn/cb", "http://127.0.0.1:9000/cb"),
                 scope="openid fhirUser patient/*.rs", secret_hash=hash_secret("s" * 43),
                 launch_uri="https://app.jiankang.cn/launch", created=2.5)
    store.add_client(backend)
    store.add_client(app)
    got = store.get_client("pingan-insurer")
    assert got == backend and got is not None and got.jwks == jwks
    assert store.get_client("jiankang-zhushou") == app
    assert [c.client_id for c in store.list_clients()] == ["pingan-insurer", "jiankang-zhushou"]
    assert store.get_client("JIANKANG-ZHUSHOU") is None  # client ids are exact


def test_duplicate_client_id_is_refused(store: SqliteAuthStore) -> None:
    c = Client(client_id="yilian-demo", kind="public", name_zh="演示", name_en="Demo",
               redirect_uris=("http://127.0.0.1:8080/demo-app/",))
    store.add_client(c)
    with pytest.raises(DuplicateError, match="yilian-demo"):
        store.add_client(c)


def test_remove_client(store: SqliteAuthStore) -> None:
    store.add_client(Client(client_id="yilian-demo", kind="public", name_zh="演示",
                            name_en="Demo", redirect_uris=("https://a.cn/cb",)))
    assert store.remove_client("yilian-demo") is True
    assert store.get_client("yilian-demo") is None
    assert store.remove_client("yilian-demo") is False


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "symmetric"}, "secret hash"),
    ({"kind": "public", "secret_hash": "ab"}, "secret hash"),
    ({"kind": "asymmetric"}, "jwks"),
    ({"kind": "public", "jwks_uri": "https://a.cn/jwks"}, "asymmetric"),
    ({"kind": "confidential"}, "kind"),
])
def test_client_record_refuses_inconsistent_credentials(kwargs: dict[str, str],
                                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(client_id="x", name_zh="应用", name_en="App", **kwargs)  # type: ignore[arg-type]


def test_username_lookup_is_nfkc_and_case_insensitive(store: SqliteAuthStore) -> None:
    store.add_user(User("Zhang.San", PHC, "Patient/pat-000001"))
    for spelling in ("Zhang.San", "zhang.san", "ZHANG.SAN", "ｚｈａｎｇ．ｓａｎ"):
        user = store.get_user(spelling)
        assert user is not None, spelling
        assert user.username == "Zhang.San"  # displayed as entered
    assert username_key("ＳＴＲＡßＥ") == username_key("strasse")
    with pytest.raises(DuplicateError):
        store.add_user(User("ZHANG.SAN", PHC, "Patient/pat-000002"))


@pytest.mark.parametrize("username, fhir_user, message", [
    ("", "Patient/pat-1", "empty"),
    ("zhang san", "Patient/pat-1", "space"),
    ("zhang\x00", "Patient/pat-1", "control"),
    ("z" * 65, "Patient/pat-1", "longer"),
    ("zhangsan", "Observation/obs-1", "Patient/<id> or Practitioner/<id>"),
    ("zhangsan", "Patient/", "Patient/<id>"),
    ("zhangsan", "Patient/pat 1", "Patient/<id>"),
    ("zhangsan", "http://x/Patient/1", "Patient/<id>"),
])
def test_user_record_validates_username_and_fhir_user(username: str, fhir_user: str,
                                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        User(username, PHC, fhir_user)


def test_disable_and_change_password(store: SqliteAuthStore) -> None:
    store.add_user(User("wangfang", PHC, "Patient/pat-000002"))
    assert store.set_user_disabled("WangFang", True) is True
    user = store.get_user("wangfang")
    assert user is not None and user.disabled
    assert store.set_user_disabled("wangfang", False) is True
    assert store.set_password_hash("wangfang", PHC + "x") is True
    user = store.get_user("wangfang")
    assert user is not None and not user.disabled and user.password_hash == PHC + "x"
    assert store.set_user_disabled("nobody", True) is False
    assert store.set_password_hash("nobody", PHC) is False
    assert [u.username for u in store.list_users()] == ["wangfang"]


def test_registration_token_is_used_up_and_expires(store: SqliteAuthStore,
                                                   clock: Clock) -> None:
    store.add_registration_token(RegistrationToken(hash_secret("tok-a"), 2, clock.now + 3600))
    store.add_registration_token(RegistrationToken(hash_secret("tok-b"), 5, clock.now + 60))
    assert store.use_registration_token(hash_secret("tok-a"), clock.now) is True
    assert store.use_registration_token(hash_secret("tok-a"), clock.now) is True
    assert store.use_registration_token(hash_secret("tok-a"), clock.now) is False
    assert store.use_registration_token(hash_secret("tok-b"), clock.now + 60) is False
    assert store.use_registration_token(hash_secret("unknown"), clock.now) is False


def test_remember_jti_refuses_a_replay_until_the_record_expires(store: SqliteAuthStore,
                                                                clock: Clock) -> None:
    until = clock.now + 300
    assert store.remember_jti("pingan-insurer", "jti-1", until) is True
    assert store.remember_jti("pingan-insurer", "jti-1", until) is False
    assert store.remember_jti("another-client", "jti-1", until) is True  # per client
    clock.now = until - 1
    assert store.remember_jti("pingan-insurer", "jti-1", clock.now + 300) is False
    clock.now = until + 1
    assert store.remember_jti("pingan-insurer", "jti-1", clock.now + 300) is True
    assert store.remember_jti("pingan-insurer", "jti-1", clock.now + 300) is False


def _race(calls: list[tuple[SqliteAuthStore, str]]) -> list[bool]:
    barrier = threading.Barrier(len(calls))
    results: list[bool] = [False] * len(calls)

    def run(i: int, s: SqliteAuthStore, jti: str) -> None:
        barrier.wait()
        results[i] = s.remember_jti("pingan-insurer", jti, 2e9)

    threads = [threading.Thread(target=run, args=(i, s, jti)) for i, (s, jti) in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_remember_jti_from_two_threads_gives_exactly_one_true(store: SqliteAuthStore) -> None:
    for n in range(30):
        assert sorted(_race([(store, f"jti-{n}"), (store, f"jti-{n}")])) == [False, True]


def test_remember_jti_from_two_connections_gives_exactly_one_true(tmp_path: Path) -> None:
    # two connections on one file: what two uvicorn workers do
    a = SqliteAuthStore(tmp_path / "auth.sqlite3")
    b = SqliteAuthStore(tmp_path / "auth.sqlite3")
    try:
        for n in range(30):
            assert sorted(_race([(a, f"jti-{n}"), (b, f"jti-{n}")])) == [False, True]
    finally:
        a.close()
        b.close()


def test_login_failures_and_lockouts(store: SqliteAuthStore) -> None:
    for at in (10.0, 20.0, 30.0):
        store.add_login_failure("user:wangfang", at)
    store.add_login_failure("user:lina", 25.0)
    assert store.login_failures_since("user:wangfang", 20.0) == [20.0, 30.0]
    store.clear_login_failures("user:wangfang")
    assert store.login_failures_since("user:wangfang", 0) == []
    assert store.login_failures_since("user:lina", 0) == [25.0]
    assert store.get_lockout("user:wangfang") is None
    store.put_lockout(Lockout("user:wangfang", 100.0, 60.0))
    store.put_lockout(Lockout("user:wangfang", 300.0, 120.0))
    assert store.get_lockout("user:wangfang") == Lockout("user:wangfang", 300.0, 120.0)
    store.clear_lockout("user:wangfang")
    assert store.get_lockout("user:wangfang") is None


def test_purge_deletes_only_expired_rows(store: SqliteAuthStore, clock: Clock) -> None:
    now = clock.now
    store.add_registration_token(RegistrationToken(hash_secret("old"), 1, now - 1))
    store.add_registration_token(RegistrationToken(hash_secret("used"), 0, now + 60))
    store.add_registration_token(RegistrationToken(hash_secret("live"), 1, now + 60))
    store.remember_jti("c", "old", now - 1)
    store.remember_jti("c", "live", now + 60)
    store.add_login_failure("user:a", now - 1000)
    store.add_login_failure("user:a", now - 10)
    store.put_lockout(Lockout("user:a", now - 1000, 60))
    store.put_lockout(Lockout("user:b", now - 10, 60))
    assert store.purge(now, failure_window=900) == 5
    assert store.use_registration_token(hash_secret("live"), now) is True
    assert store.remember_jti("c", "live", now + 60) is False
    assert store.login_failures_since("user:a", 0) == [now - 10]
    assert store.get_lockout("user:a") is None
    assert store.get_lockout("user:b") is not None


def test_revocations_by_this_and_another_connection_are_seen_at_once(tmp_path: Path) -> None:
    # is_revoked answers from memory; the copy must follow this connection's own writes and
    # every other connection's (another uvicorn worker, `yilian` on the command line).
    worker = SqliteAuthStore(tmp_path / "auth.sqlite3")
    other = SqliteAuthStore(tmp_path / "auth.sqlite3")
    try:
        assert not worker.is_revoked("jti-1", "grant-1")
        worker.revoke(jti="jti-1", until=time.time() + 60)
        assert worker.is_revoked("jti-1", None)
        assert not worker.is_revoked("jti-2", "grant-1")
        other.revoke(grant_id="grant-1", until=time.time() + 60)
        time.sleep(REVOCATION_RECHECK_SECONDS)  # the bound on another process's revocation
        assert worker.is_revoked("jti-2", "grant-1")
        assert not worker.is_revoked("jti-3", "grant-2")
        other.revoke(jti="jti-3", until=time.time() + 60)
        time.sleep(REVOCATION_RECHECK_SECONDS)
        assert worker.is_revoked("jti-3", "grant-2")
    finally:
        worker.close()
        other.close()
