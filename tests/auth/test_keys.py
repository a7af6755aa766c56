"""The token signing keyring (app/auth/keys.py): generation, rotation, pruning, JWKS, sign/verify,
and the attacks a JWT verifier must refuse (RFC 8725 §2-3)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from app.auth.keys import (
    RELOAD_INTERVAL_SECONDS,
    ROTATION_LEEWAY_SECONDS,
    AlgorithmNotAllowedError,
    BadSignatureError,
    Keyring,
    KeyringError,
    MalformedTokenError,
    UnknownKidError,
    WrongTokenTypeError,
)
from app.server import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://fhir.zsyy.example.cn/fhir"
T0 = 1_795_000_000  # 2026-11-18, a fixed "now" for the injected clock

# An access token for a patient of 中山医院 (realistic claims, RFC 9068 shape).
CLAIMS: dict[str, Any] = {
    "iss": ISSUER, "sub": "Patient/pat-000001", "aud": ISSUER, "client_id": "jiankang-zhushou",
    "scope": "launch/patient patient/Observation.rs", "patient": "pat-000001",
    "name": "王秀英", "iat": T0, "exp": T0 + 3600, "jti": "c3b1f0b2-5d8e-4c1a-9f0e-2b7d3a6e9c41",
}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(header))),
            json.loads(base64.urlsafe_b64decode(pad(payload))), signature)


def listed(keys_dir: Path) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = json.loads((keys_dir / "keyring.json").read_text())["keys"]
    return keys


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- generation ------------------------------------------------------------------------------------

def test_first_start_generates_one_rs256_key_with_private_file_mode_0600(tmp_path: Path) -> None:
    keys_dir = tmp_path / "var" / "keys"
    ring = Keyring(keys_dir, clock=Clock())
    ring.ensure()

    [info] = ring.keys()
    assert (info.alg, info.status, info.created, info.retire_after) == ("RS256", "active", T0,
                                                                        None)
    assert mode(keys_dir) == 0o700
    pem = keys_dir / f"{info.kid}.pem"
    assert mode(pem) == 0o600
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    # kid is the RFC 7638 thumbprint of the stored key
    assert RSAKey.import_key(pem.read_bytes()).thumbprint() == info.kid
    assert listed(keys_dir) == [{"kid": info.kid, "alg": "RS256", "use": "sig",
                                 "status": "active", "created": T0, "retire_after": None}]
    assert sorted(p.name for p in keys_dir.iterdir()) == sorted([pem.name, "keyring.json"])

    ring.ensure()  # a restart generates nothing more
    Keyring(keys_dir).ensure()
    assert [k["kid"] for k in listed(keys_dir)] == [info.kid]


def test_es384_keyring_adds_a_p384_key_and_keeps_rs256_for_id_tokens(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys", "ES384")
    ring.ensure()
    infos = ring.keys()
    by_alg = {i.alg: i for i in infos}
    assert set(by_alg) == {"RS256", "ES384"}
    assert ECKey.import_key((tmp_path / "keys" / f"{by_alg['ES384'].kid}.pem").read_bytes()
                            ).curve_name == "P-384"
    assert segments(ring.sign(CLAIMS))[0]["alg"] == "ES384"
    assert segments(ring.sign(CLAIMS, alg="RS256"))[0]["alg"] == "RS256"


def _ensure_in_child(keys_dir: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    ring = Keyring(Path(keys_dir))
    ring.ensure()
    infos = ring.keys()
    results.put([i.kid for i in infos])


def test_two_processes_ensuring_at_once_make_one_key(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ctx = multiprocessing.get_context("fork")
    workers = 4
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=(str(keys_dir), barrier, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    seen = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    [kid] = [k["kid"] for k in listed(keys_dir)]
    assert seen == [[kid]] * workers
    assert sorted(p.name for p in keys_dir.iterdir()) == sorted([f"{kid}.pem", "keyring.json"])


def test_lock_left_by_a_dead_process_does_not_block_ensure(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (keys_dir / "keyring.lock").write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")

    started = time.monotonic()
    Keyring(keys_dir).ensure()
    assert time.monotonic() - started < 5
    assert len(listed(keys_dir)) == 1
    assert not (keys_dir / "keyring.lock").exists()


def test_a_damaged_keyring_file_is_reported_with_its_path(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    Keyring(keys_dir).ensure()
    (keys_dir / "keyring.json").write_text('{"keys": [{"kid": "abc"}]}')
    with pytest.raises(KeyringError, match=r"keyring\.json: keys\[0\]"):
        Keyring(keys_dir).keys()


# -- signing and verifying -------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "ES384"])
def test_sign_verify_round_trip(tmp_path: Path, alg: str) -> None:
    ring = Keyring(tmp_path / "keys", alg)
    ring.ensure()
    token = ring.sign(CLAIMS, typ="at+jwt")

    header, payload, _ = segments(token)
    infos = ring.keys()
    active = next(i for i in infos if i.alg == alg)
    assert header == {"alg": alg, "kid": active.kid, "typ": "at+jwt"}
    assert payload == CLAIMS
    assert ring.verify(token) == CLAIMS
    assert ring.verify(token, typ="application/at+jwt") == CLAIMS
    # another process (a second uvicorn worker) verifies from the files alone
    assert Keyring(tmp_path / "keys", alg).verify(token) == CLAIMS


def test_expiry_and_audience_are_left_to_the_resource_server(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    ring.ensure()
    stale = {**CLAIMS, "exp": 1, "aud": "https://another.example.cn/fhir"}
    assert ring.verify(ring.sign(stale)) == stale


def test_token_signed_before_rotation_verifies_until_pruned(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    clock = Clock()
    ring = Keyring(keys_dir, clock=clock)
    ring.ensure()
    [old] = ring.keys()
    before = ring.sign(CLAIMS, typ="at+jwt")

    clock.now = T0 + 600
    new_kid = ring.rotate(3600)
    assert new_kid != old.kid
    listing = ring.keys()
    infos = {i.kid: i for i in listing}
    assert (infos[new_kid].status, infos[new_kid].retire_after) == ("active", None)
    assert infos[old.kid].status == "retiring"
    assert infos[old.kid].retire_after == T0 + 600 + 3600 + ROTATION_LEEWAY_SECONDS
    after = ring.sign(CLAIMS)
    assert segments(after)[0]["kid"] == new_kid
    assert ring.verify(before) == CLAIMS  # still valid: it may not have expired yet

    clock.now = T0 + 600 + 3600 + ROTATION_LEEWAY_SECONDS - 1
    assert ring.prune() == []
    assert ring.verify(before) == CLAIMS

    clock.now += 1
    assert ring.prune() == [old.kid]
    assert not (keys_dir / f"{old.kid}.pem").exists()
    assert [k["kid"] for k in listed(keys_dir)] == [new_kid]
    with pytest.raises(UnknownKidError):
        ring.verify(before)
    with pytest.raises(UnknownKidError):
        Keyring(keys_dir).verify(before)
    assert ring.verify(after) == CLAIMS


def test_prune_honours_a_retire_after_set_in_the_file(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ring = Keyring(keys_dir)
    ring.ensure()
    old = ring.keys()[0].kid
    new = ring.rotate(3600)
    assert ring.prune() == []
    entries = listed(keys_dir)
    for entry in entries:
        if entry["kid"] == old:
            entry["retire_after"] = int(time.time()) - 1
    (keys_dir / "keyring.json").write_text(json.dumps({"keys": entries}))
    assert Keyring(keys_dir).prune() == [old]
    assert sorted(p.name for p in keys_dir.iterdir()) == sorted([f"{new}.pem", "keyring.json"])


def test_jwks_lists_active_and_retiring_public_keys_without_private_members(
        tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys", "ES384")
    ring.ensure()
    before = ring.sign(CLAIMS)
    ring.rotate(3600)
    after = ring.sign(CLAIMS)

    jwks = ring.jwks()
    infos = ring.keys()
    assert {k["kid"] for k in jwks["keys"]} == {i.kid for i in infos}
    assert len(jwks["keys"]) == 4  # RS256 + ES384, active + retiring
    for key in jwks["keys"]:
        assert key["use"] == "sig"
        assert key["alg"] in ("RS256", "ES384")
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), key
    # a relying party holding only the published JWKS verifies tokens from both generations
    published = KeySet.import_key_set(json.loads(json.dumps(jwks)))
    for token in (before, after):
        assert jwt.decode(token, published, algorithms=["ES384"]).claims == CLAIMS


def test_reload_picks_up_a_rotation_by_another_process(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    worker = Keyring(keys_dir)
    worker.ensure()
    [first] = worker.keys()

    rotated = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from app.auth.keys import Keyring; r = Keyring(Path(sys.argv[1])); "
         "print(r.rotate(3600)); print(r.sign({'sub': 'Practitioner/prac-0001'}))",
         str(keys_dir)], cwd=ROOT, capture_output=True, text=True, check=True)
    new_kid, token = rotated.stdout.split()

    # a token from the new key verifies at once: an unknown kid makes the worker look again
    assert worker.verify(token) == {"sub": "Practitioner/prac-0001"}
    time.sleep(RELOAD_INTERVAL_SECONDS)
    assert not worker.reload_if_changed()  # already re-read by verify
    infos = worker.keys()
    assert {i.kid: i.status for i in infos} == {new_kid: "active", first.kid: "retiring"}
    assert segments(worker.sign(CLAIMS))[0]["kid"] == new_kid


def test_reload_looks_at_the_file_at_most_once_a_second(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    worker = Keyring(keys_dir)
    worker.ensure()
    Keyring(keys_dir).rotate(3600)
    assert not worker.reload_if_changed()  # looked less than a second ago (in ensure)
    assert len(worker.keys()) == 1
    time.sleep(RELOAD_INTERVAL_SECONDS)
    assert worker.reload_if_changed()
    assert len(worker.keys()) == 2


# -- attacks ---------------------------------------------------------------------------------------

@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    ring = Keyring(tmp_path / "keys")
    ring.ensure()
    return ring


def test_alg_none_token_is_rejected(ring: Keyring) -> None:
    kid = ring.keys()[0].kid
    for alg in ("none", "None", "NONE"):
        unsigned = f"{b64url_json({'alg': alg, 'kid': kid, 'typ': 'JWT'})}.{b64url_json(CLAIMS)}."
        with pytest.raises(AlgorithmNotAllowedError):
            ring.verify(unsigned)


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
def test_hs256_token_signed_with_our_public_key_is_rejected(ring: Keyring,
                                                             secret_form: str) -> None:
    [public] = ring.jwks()["keys"]
    key = RSAKey.import_key(public)
    secret = (key.as_pem(private=False) if secret_form == "pem"
              else json.dumps(public).encode())
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384),
                        ("HS512", hashlib.sha512)):
        signing_input = f"{b64url_json({'alg': alg, 'kid': public['kid']})}.{b64url_json(CLAIMS)}"
        mac = hmac.new(secret, signing_input.encode(), digest).digest()
        with pytest.raises(AlgorithmNotAllowedError):
            ring.verify(f"{signing_input}.{b64url(mac)}")


def test_unknown_kid_is_rejected(ring: Keyring, tmp_path: Path) -> None:
    other = Keyring(tmp_path / "another-hospital")
    other.ensure()
    with pytest.raises(UnknownKidError):
        ring.verify(other.sign(CLAIMS))
    # no kid at all: we never try keys one after another
    stranger = RSAKey.generate_key(2048, private=True)
    no_kid = jwt.encode({"alg": "RS256"}, CLAIMS, stranger, algorithms=["RS256"])
    with pytest.raises(UnknownKidError):
        ring.verify(no_kid)


def test_token_carrying_its_own_key_in_the_header_is_rejected(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys", "ES384")
    ring.ensure()
    kid = segments(ring.sign(CLAIMS))[0]["kid"]
    attacker = ECKey.generate_key("P-384", private=True)
    header = {"alg": "ES384", "kid": kid, "jwk": attacker.as_dict(private=False)}
    forged = jwt.encode(header, CLAIMS, attacker, algorithms=["ES384"])
    with pytest.raises(BadSignatureError):
        ring.verify(forged)


def test_tampered_payload_is_rejected(ring: Keyring) -> None:
    header, _, signature = ring.sign(CLAIMS).split(".")
    widened = {**CLAIMS, "scope": "system/*.cruds", "patient": "pat-000002"}
    with pytest.raises(BadSignatureError):
        ring.verify(f"{header}.{b64url_json(widened)}.{signature}")


def test_alg_that_does_not_match_the_named_key_is_rejected(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys", "ES384")
    ring.ensure()
    _, payload, signature = ring.sign(CLAIMS).split(".")
    claimed = {**segments(ring.sign(CLAIMS))[0], "alg": "RS256"}
    with pytest.raises(AlgorithmNotAllowedError, match="ES384"):
        ring.verify(f"{b64url_json(claimed)}.{payload}.{signature}")


def test_id_token_is_not_accepted_where_an_access_token_is_expected(ring: Keyring) -> None:
    id_token = ring.sign({**CLAIMS, "aud": "jiankang-zhushou"}, typ="JWT")
    with pytest.raises(WrongTokenTypeError):
        ring.verify(id_token, typ="at+jwt")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30",
                                     "头.部.签名", "e30.e30.e30.e30.e30"])
def test_garbage_is_a_malformed_token(ring: Keyring, garbage: str) -> None:
    with pytest.raises((MalformedTokenError, AlgorithmNotAllowedError)):
        ring.verify(garbage)


def test_non_object_payload_is_rejected(ring: Keyring, tmp_path: Path) -> None:
    kid = ring.keys()[0].kid
    private = RSAKey.import_key((tmp_path / "keys" / f"{kid}.pem").read_bytes())
    token = jws.serialize_compact({"alg": "RS256", "kid": kid}, b"[1, 2]", private)
    with pytest.raises(MalformedTokenError, match="JSON object"):
        ring.verify(token)


# -- the endpoint ----------------------------------------------------------------------------------

def test_jwks_endpoint_serves_the_keyring(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        keyring: Keyring = client.app.state.keyring  # type: ignore[attr-defined]
        assert mode(settings.keys_dir) == 0o700
        r = client.get("/auth/jwks")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "public, max-age=300"
        body = r.json()
        assert body == keyring.jwks()
        [key] = body["keys"]
        assert key["kid"] == keyring.keys()[0].kid and "d" not in key
        token = keyring.sign(CLAIMS, typ="at+jwt")
        assert jwt.decode(token, KeySet.import_key_set(body), algorithms=["RS256"]
                          ).claims == CLAIMS
        # the FHIR API is untouched
        assert client.get("/fhir/metadata").status_code == 200

    # a restart keeps the key
    with TestClient(create_app(settings)) as client:
        assert client.get("/auth/jwks").json() == body
    assert sorted(os.listdir(settings.keys_dir)) == sorted(["keyring.json", f"{key['kid']}.pem"])
