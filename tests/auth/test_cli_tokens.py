"""`yilian tokens mint` through `app.cli.main`, on a real var dir: the token it prints is one the
server's own verifier (same keys, issuer and audience) accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.auth.bearer import BearerError, BearerVerifier
from app.auth.keys import Keyring
from app.auth.routes_token import AuthUrls
from app.cli import main
from app.config import Settings

BASE = "http://127.0.0.1:8089/fhir"


@pytest.fixture
def var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    var = tmp_path / "var"
    monkeypatch.setenv("YILIAN_VAR_DIR", str(var))
    monkeypatch.setenv("YILIAN_BASE_URL", BASE)
    return var


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def verifier(var: Path, base: str = BASE) -> BearerVerifier:
    """What the FHIR server would build for this var dir: no cache, so every call checks."""
    settings = Settings(var_dir=var, base_url=base)
    urls = AuthUrls.from_base_url(settings.base_url)
    return BearerVerifier(Keyring(settings.keys_dir, settings.token_alg), issuer=urls.issuer,
                          audience=urls.fhir_base, revoked=lambda jti, gid: False, cache_size=0)


def mint(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, "tokens", "mint", *argv)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out  # the token only, nothing else on stdout
    return lines[0]


def test_system_token_verifies_with_the_servers_keys(
        var: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(capsys, "--client-id", "bench", "--scope", "system/*.rs")
    assert token.count(".") == 2
    principal = verifier(var).verify(f"Bearer {token}")
    assert principal.client_id == "bench" and principal.subject == "bench"
    assert principal.scopes == ("system/*.rs",)
    assert principal.patient is None and not principal.anonymous
    assert principal.expires_at is not None
    # issuer is <base minus /fhir>/auth, exactly what the token endpoint signs
    assert verifier(var).verify_token(token).issuer == "http://127.0.0.1:8089/auth"
    assert (var / "keys").is_dir()  # signed with the var dir's own keys


def test_patient_token_carries_its_context(var: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(capsys, "--client-id", "app", "--scope", "patient/*.rs openid fhirUser",
                 "--patient", "p-001", "--fhir-user", "Patient/p-001", "--subject", "wang",
                 "--lifetime", "600")
    claims = verifier(var).verify_token(token)
    assert claims.patient == "p-001" and claims.fhir_user == "Patient/p-001"
    assert claims.subject == "wang" and claims.client_id == "app"
    assert claims.expires_at - claims.issued_at == 600
    assert set(claims.scope.tokens()) == {"openid", "fhirUser", "patient/*.rs"}


def test_token_for_another_server_or_var_dir_is_refused(
        var: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(capsys, "--client-id", "bench", "--scope", "system/Observation.rs")
    with pytest.raises(BearerError) as wrong_aud:
        verifier(var, "http://127.0.0.1:9999/fhir").verify(f"Bearer {token}")
    assert wrong_aud.value.status == 401
    other = tmp_path / "other"
    Keyring(other / "keys").ensure()
    with pytest.raises(BearerError) as wrong_keys:
        verifier(other).verify(f"Bearer {token}")
    assert wrong_keys.value.status == 401


@pytest.mark.parametrize(("argv", "words"), [
    (["--scope", "system/*.xyz"], ["--scope", "system/*.xyz"]),
    (["--scope", "system/NoSuchType.rs"], ["--scope", "NoSuchType"]),
    (["--scope", "openid fhirUser"], ["no resource scope"]),
    (["--scope", "patient/*.rs"], ["--patient"]),
    (["--scope", "patient/*.rs", "--patient", "bad id!"], ["--patient", "not a FHIR id"]),
    (["--scope", "system/*.rs", "--lifetime", "3601"], ["--lifetime", "3600"]),
    (["--scope", "system/*.rs", "--lifetime", "0"], ["--lifetime"]),
    (["--scope", "system/*.rs", "--fhir-user", "Group/x"], ["fhir_user"]),
])
def test_bad_arguments_exit_2_with_one_line(var: Path, capsys: pytest.CaptureFixture[str],
                                            argv: list[str], words: list[str]) -> None:
    code, out, err = run(capsys, "tokens", "mint", "--client-id", "bench", *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yilian tokens: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (var / "keys").exists()  # refused before touching the keyring
