"""The `make run` demo of SMART authorization (app/auth/demo.py, `yilian serve`): demo accounts
with random passwords in a 0600 file, the `yilian-demo` app, the printed instructions, and the
`YILIAN_AUTH=off` development flag. The demo on a real `yilian serve`, in a browser:
tests/e2e/test_demo_app.py."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from app.auth.demo import (
    CREDENTIALS_FILE,
    DEMO_CLIENT_ID,
    DemoUrls,
    ensure_demo_client,
    read_credentials,
    seed_demo_auth,
    seed_demo_users,
)
from app.auth.passwords import Passwords
from app.auth.sqlite_store import SqliteAuthStore
from app.server import create_app
from tests.conftest import make_settings
from tests.live_server import REPO, LiveServer

BASE = "http://127.0.0.1:8080/fhir"
# Cheap argon2 parameters: these tests are about seeding, not about the KDF's cost.
FAST = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteAuthStore]:
    with contextlib.closing(SqliteAuthStore.in_var_dir(tmp_path / "var")) as s:
        yield s


def test_demo_accounts_link_to_the_demo_hospital(store: SqliteAuthStore, tmp_path: Path) -> None:
    logins = seed_demo_users(store, tmp_path / "var" / CREDENTIALS_FILE, passwords=FAST)
    assert [(x.username, x.fhir_user) for x in logins] == [
        ("patient1", "Patient/pat-000001"), ("patient2", "Patient/pat-000002"),
        ("doctor1", "Practitioner/prac-0001")]
    users = {u.username: u for u in store.list_users()}
    assert users["patient1"].access == "compartment"
    assert users["doctor1"].access == "all"


def test_passwords_are_random_and_only_in_the_0600_file(store: SqliteAuthStore,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "var" / CREDENTIALS_FILE
    logins = seed_demo_users(store, path, passwords=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_credentials(path) == logins
    passwords = [x.password for x in logins]
    assert len(set(passwords)) == 3 and all(len(p) >= 16 for p in passwords)
    for login in logins:
        user = store.get_user(login.username)
        assert user is not None and login.password not in user.password_hash
        assert FAST.verify(user.password_hash, login.password)
        assert not FAST.verify(user.password_hash, login.password + "x")


def test_another_install_gets_other_passwords(tmp_path: Path) -> None:
    seen = []
    for name in ("a", "b"):
        with contextlib.closing(SqliteAuthStore.in_var_dir(tmp_path / name)) as s:
            seen.append(seed_demo_users(s, tmp_path / name / CREDENTIALS_FILE, passwords=FAST))
    assert {x.password for x in seen[0]}.isdisjoint({x.password for x in seen[1]})


def test_existing_users_are_never_touched(store: SqliteAuthStore, tmp_path: Path) -> None:
    path = tmp_path / "var" / CREDENTIALS_FILE
    first = seed_demo_users(store, path, passwords=FAST)
    assert seed_demo_users(store, path, passwords=FAST) == []
    assert read_credentials(path) == first
    assert len(store.list_users()) == 3


def test_demo_client_follows_the_servers_origin(store: SqliteAuthStore) -> None:
    urls = DemoUrls.from_base_url(BASE)
    assert urls.app == "http://127.0.0.1:8080/demo-app/"
    assert urls.launch == "http://127.0.0.1:8080/demo-app/launch.html"
    assert urls.ehr == "http://127.0.0.1:8080/auth/ehr"
    assert ensure_demo_client(store, urls)
    client = store.get_client(DEMO_CLIENT_ID)
    assert client is not None and client.kind == "public"
    assert client.redirect_uris == (urls.app,) and client.launch_uri == urls.launch
    moved = DemoUrls.from_base_url("http://127.0.0.1:9090/fhir")
    assert ensure_demo_client(store, moved)
    client = store.get_client(DEMO_CLIENT_ID)
    assert client is not None and client.redirect_uris == ("http://127.0.0.1:9090/demo-app/",)
    assert [c.client_id for c in store.list_clients()] == [DEMO_CLIENT_ID]


def test_demo_client_is_not_registered_for_plain_http_on_a_public_host(
        store: SqliteAuthStore) -> None:
    assert not ensure_demo_client(store, DemoUrls.from_base_url("http://emr.example.cn/fhir"))
    assert store.get_client(DEMO_CLIENT_ID) is None


def test_instructions_name_the_app_the_ehr_launcher_and_every_login(store: SqliteAuthStore,
                                                                    tmp_path: Path) -> None:
    lines = "\n".join(seed_demo_auth(store, BASE, tmp_path / "var"))
    assert "http://127.0.0.1:8080/demo-app/" in lines
    assert "http://127.0.0.1:8080/auth/ehr" in lines
    for login in read_credentials(tmp_path / "var" / CREDENTIALS_FILE):
        assert login.username in lines and login.password in lines
    # the next start prints the same logins, read back from the file
    again = "\n".join(seed_demo_auth(store, BASE, tmp_path / "var"))
    for login in read_credentials(tmp_path / "var" / CREDENTIALS_FILE):
        assert login.password in again


def test_demo_app_page_is_served_with_this_servers_configuration(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth="smart")
    with TestClient(create_app(settings)) as client:
        for path in ("/demo-app/", "/demo-app/launch.html"):
            response = client.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
            assert response.headers["cache-control"] == "no-store"
            page = response.text
            assert '"clientId":"yilian-demo"' in page
            assert '"fhirBase":"http://testserver/fhir"' in page
            assert "crypto.subtle.digest" in page and "code_challenge_method" in page
            assert "__YILIAN_DEMO_CONFIG__" not in page


def test_demo_app_is_not_served_with_the_demo_off(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, demo=False))) as client:
        assert client.get("/demo-app/").status_code == 404


# -- `yilian serve` ---------------------------------------------------------------------------


def test_serve_refuses_auth_off_on_a_public_host(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YILIAN_")}
    env.update({"YILIAN_AUTH": "off", "YILIAN_VAR_DIR": str(tmp_path / "var"),
                "PYTHONPATH": str(REPO)})
    proc = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0",
                           "--port", "1"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "YILIAN_AUTH=off" in proc.stderr and "loopback" in proc.stderr
    assert not (tmp_path / "var" / "yilian.sqlite3").exists()


def test_serve_prints_a_warning_banner_when_auth_is_off(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "var", env={"YILIAN_AUTH": "off"}) as server:
        log = server.log_text()
    assert "!!" in log and "authorization is OFF" in log
