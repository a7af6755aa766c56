"""`yilian clients|users|keys` through `app.cli.main`, on a real var dir."""

from __future__ import annotations

import io
import json
import re
import stat
import sys
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from app.auth.clients import use_registration_token, verify_client_secret
from app.auth.passwords import Passwords
from app.auth.sqlite_store import SqliteAuthStore, auth_db_path
from app.cli import main

CB = "https://app.jiankang.cn/smart/callback"


@pytest.fixture
def var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    var = tmp_path / "var"
    monkeypatch.setenv("YILIAN_VAR_DIR", str(var))
    return var


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def store(var: Path) -> SqliteAuthStore:
    return SqliteAuthStore.in_var_dir(var)


def _refused(code: int, err: str, *words: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_public_client_add_list_remove(var: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "clients", "add", "--name", "健康助手", "--public",
                       "--redirect-uri", CB, "--redirect-uri", "http://127.0.0.1:9000/cb",
                       "--launch-uri", "https://app.jiankang.cn/launch",
                       "--scope", "patient/*.rs openid fhirUser launch/patient offline_access")
    assert code == 0
    assert out.startswith("client_id: ") and "secret" not in out
    client_id = out.split(": ", 1)[1].strip()
    s = store(var)
    client = s.get_client(client_id)
    s.close()
    assert client is not None and client.kind == "public"
    assert client.redirect_uris == (CB, "http://127.0.0.1:9000/cb")
    assert client.launch_uri == "https://app.jiankang.cn/launch"
    assert set(client.scope.split()) == {"patient/*.rs", "openid", "fhirUser",
                                         "launch/patient", "offline_access"}
    code, out, _ = run(capsys, "clients", "list")
    assert code == 0 and client_id in out and "健康助手" in out and CB in out
    assert run(capsys, "clients", "remove", client_id)[0] == 0
    code, out, _ = run(capsys, "clients", "list")
    assert client_id not in out
    code, _, err = run(capsys, "clients", "remove", client_id)
    _refused(code, err, client_id)


def test_auth_database_is_created_mode_0600(var: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    assert run(capsys, "clients", "list")[0] == 0
    assert stat.S_IMODE(auth_db_path(var).stat().st_mode) == 0o600


def test_secret_client_prints_its_secret_once_and_stores_only_the_hash(
        var: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "clients", "add", "--name", "医保结算", "--secret",
                       "--redirect-uri", CB, "--json")
    assert code == 0
    printed = json.loads(out)
    secret = printed["client_secret"]
    s = store(var)
    client = s.get_client(printed["client_id"])
    s.close()
    assert client is not None and verify_client_secret(client, secret)
    code, out, _ = run(capsys, "clients", "list", "--json")
    assert secret not in out and client.secret_hash not in out
    assert json.loads(out)[0]["client_id"] == printed["client_id"]
    for f in var.iterdir():
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_backend_client_from_a_jwks_file(var: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    jwks_file = tmp_path / "insurer.jwks.json"
    key = ECKey.generate_key("P-384")
    jwks_file.write_text(json.dumps(
        {"keys": [{**key.as_dict(private=False), "kid": "insurer-2026"}]}))
    code, out, _ = run(capsys, "clients", "add", "--name", "平安医保", "--client-id",
                       "pingan-insurer", "--jwks-file", str(jwks_file), "--scope",
                       "system/Patient.rs system/Coverage.rs")
    assert (code, out.strip()) == (0, "client_id: pingan-insurer")
    s = store(var)
    client = s.get_client("pingan-insurer")
    s.close()
    assert client is not None and client.kind == "asymmetric"
    assert client.grant_types == ("client_credentials",)
    assert client.jwks is not None and client.jwks["keys"][0]["kid"] == "insurer-2026"


@pytest.mark.parametrize("argv, words", [
    (["--public", "--redirect-uri", "http://app.jiankang.cn/cb"], ["redirect_uri", "https"]),
    (["--public", "--redirect-uri", CB + "#x"], ["fragment"]),
    (["--public"], ["redirect_uri"]),
    (["--public", "--redirect-uri", CB, "--scope", "patient/Observation.sr"], ["scope"]),
    (["--jwks-uri", "http://insurer.pingan.cn/jwks"], ["jwks_uri", "https"]),
    (["--jwks-file", "/nonexistent/jwks.json"], ["--jwks-file"]),
])
def test_invalid_client_is_refused_with_one_line(var: Path, capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], words: list[str]) -> None:
    code, out, err = run(capsys, "clients", "add", "--name", "健康助手", *argv)
    _refused(code, err, "yilian clients:", *words)
    assert out == ""
    s = store(var)
    assert s.list_clients() == []
    s.close()


def test_client_kind_is_required_and_exclusive(var: Path) -> None:
    for argv in (["--redirect-uri", CB], ["--public", "--secret", "--redirect-uri", CB]):
        with pytest.raises(SystemExit) as exc:
            main(["clients", "add", "--name", "健康助手", *argv])
        assert exc.value.code == 2


def test_registration_token(var: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "clients", "token", "--uses", "2", "--ttl", "1h")
    assert code == 0
    token = out.strip()
    assert len(token) >= 43
    s = store(var)
    try:
        assert [use_registration_token(s, token) for _ in range(3)] == [True, True, False]
    finally:
        s.close()
    assert token.encode() not in auth_db_path(var).read_bytes()
    code, _, err = run(capsys, "clients", "token", "--ttl", "soon")
    _refused(code, err, "--ttl")


def test_user_add_list_disable_and_passwd(var: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, "Xiehe-2026-内科\n")
    code, _, _ = run(capsys, "users", "add", "--username", "LiNa", "--fhir-user",
                     "Practitioner/prac-0001", "--password-stdin")
    assert code == 0
    stdin(monkeypatch, "Wang-fang-1949\r\n")
    assert run(capsys, "users", "add", "--username", "wangfang", "--fhir-user",
               "Patient/pat-000001", "--password-stdin", "--locale", "en")[0] == 0
    code, out, _ = run(capsys, "users", "list")
    assert code == 0
    rows = [line.split("\t") for line in out.strip().splitlines()[1:]]
    assert rows == [["LiNa", "Practitioner/prac-0001", "all", "zh", "active"],
                    ["wangfang", "Patient/pat-000001", "compartment", "en", "active"]]
    s = store(var)
    user = s.get_user("lina")
    assert user is not None
    passwords = Passwords()
    assert passwords.verify(user.password_hash, "Xiehe-2026-内科")
    wang = s.get_user("WANGFANG")
    assert wang is not None and passwords.verify(wang.password_hash, "Wang-fang-1949")
    s.close()
    assert b"Xiehe-2026" not in auth_db_path(var).read_bytes()

    assert run(capsys, "users", "disable", "LINA")[0] == 0
    assert "disabled" in run(capsys, "users", "list")[1].splitlines()[1]
    assert run(capsys, "users", "enable", "lina")[0] == 0

    stdin(monkeypatch, "Xiehe-2027-外科\n")
    assert run(capsys, "users", "passwd", "lina", "--password-stdin")[0] == 0
    s = store(var)
    user = s.get_user("lina")
    s.close()
    assert user is not None and not user.disabled
    assert passwords.verify(user.password_hash, "Xiehe-2027-外科")
    assert not passwords.verify(user.password_hash, "Xiehe-2026-内科")


@pytest.mark.parametrize("argv, password, words", [
    (["--username", "LINA", "--fhir-user", "Patient/pat-000002"], "Another-pass-1\n", ["taken"]),
    (["--username", "zhangsan", "--fhir-user", "Observation/obs-1"], "Zhang-san-1949\n",
     ["fhir_user"]),
    (["--username", "zhangsan", "--fhir-user", "Patient/pat-000003"], "short\n", ["at least 8"]),
    (["--username", "zhangsan", "--fhir-user", "Patient/pat-000003"], "", ["stdin"]),
    (["--username", "zhang san", "--fhir-user", "Patient/pat-000003"], "Zhang-san-1949\n",
     ["username"]),
])
def test_invalid_user_is_refused_with_one_line(var: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str],
                                               argv: list[str], password: str,
                                               words: list[str]) -> None:
    stdin(monkeypatch, "Xiehe-2026-内科\n")
    assert run(capsys, "users", "add", "--username", "LiNa", "--fhir-user",
               "Practitioner/prac-0001", "--password-stdin")[0] == 0
    stdin(monkeypatch, password)
    code, _, err = run(capsys, "users", "add", *argv, "--password-stdin")
    _refused(code, err, "yilian users:", *words)
    s = store(var)
    assert [u.username for u in s.list_users()] == ["LiNa"]
    s.close()


def test_unknown_user_commands_fail(var: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "users", "disable", "nobody")
    _refused(code, err, "nobody")
    stdin(monkeypatch, "Whatever-123\n")
    code, _, err = run(capsys, "users", "passwd", "nobody", "--password-stdin")
    _refused(code, err, "nobody")


def test_keys_rotate_list_prune(var: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0 and out.strip().splitlines() == ["kid\talg\tstatus\tcreated\tretire_after"]
    code, out, _ = run(capsys, "keys", "rotate")
    assert code == 0
    first = re.match(r"new active RS256 key (\S+);", out)[1]  # type: ignore[index]
    code, out, _ = run(capsys, "keys", "rotate")
    second = re.match(r"new active RS256 key (\S+);", out)[1]  # type: ignore[index]
    assert first != second
    code, out, _ = run(capsys, "keys", "list")
    rows = {r.split("\t")[0]: r.split("\t") for r in out.strip().splitlines()[1:]}
    assert rows[second][1:3] == ["RS256", "active"] and rows[second][4] == "-"
    assert rows[first][2] == "retiring" and rows[first][4] != "-"
    assert (var / "keys" / f"{first}.pem").exists()
    # the retiring key stays until the tokens it signed (<= 3600 s) have expired
    code, out, _ = run(capsys, "keys", "prune")
    assert (code, out.strip()) == (0, "nothing to prune")
    assert (var / "keys" / f"{first}.pem").exists()
