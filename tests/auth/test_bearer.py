"""RFC 6750 / RFC 9068 bearer access tokens on the resource server (app/auth/bearer.py): issuing,
verifying every claim, the WWW-Authenticate challenges, revocation and the verified-token cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from app.auth.bearer import (
    ACCESS_TOKEN_TYPE,
    EXPIRED,
    MALFORMED,
    NOT_ACCESS_TOKEN,
    NOT_OURS,
    NOT_YET_VALID,
    OTHER_AUDIENCE,
    REVOKED,
    AccessTokenClaims,
    BearerError,
    BearerVerifier,
    issue_access_token,
)
from app.auth.keys import Keyring
from app.auth.scopes import ScopeSet, parse_scopes
from app.pipeline.hooks import Principal

BASE = "https://fhir.zsyy.example.cn/fhir"  # issuer = audience = the FHIR base URL
T0 = 1_795_000_000  # 2026-11-18, the injected clock's "now"
SCOPE = ("launch/patient openid fhirUser offline_access patient/Patient.rs "
         "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
         "observation-category|laboratory")
FIXED_DESCRIPTIONS = {MALFORMED, NOT_OURS, NOT_ACCESS_TOKEN, OTHER_AUDIENCE, EXPIRED,
                      NOT_YET_VALID, REVOKED}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingKeyring(Keyring):
    """The real keyring, counting how often a signature is checked."""

    verify_calls = 0

    def verify(self, token: str, *, typ: str | None = None) -> dict[str, Any]:
        self.verify_calls += 1
        return super().verify(token, typ=typ)


class Revocations:
    """What the auth store's `revoked` table answers: revoked jtis and grant ids."""

    def __init__(self) -> None:
        self.jtis: set[str] = set()
        self.grants: set[str] = set()
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, jti: str, grant_id: str | None) -> bool:
        self.asked.append((jti, grant_id))
        return jti in self.jtis or (grant_id is not None and grant_id in self.grants)


@pytest.fixture(scope="module", params=["RS256", "ES384"])
def ring(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> CountingKeyring:
    keyring = CountingKeyring(tmp_path_factory.mktemp(f"keys-{request.param}"), request.param)
    keyring.ensure()
    return keyring


@pytest.fixture(scope="module")
def rs256(tmp_path_factory: pytest.TempPathFactory) -> CountingKeyring:
    keyring = CountingKeyring(tmp_path_factory.mktemp("keys-rs256"))
    keyring.ensure()
    return keyring


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def revocations() -> Revocations:
    return Revocations()


@pytest.fixture
def verifier(rs256: CountingKeyring, clock: Clock, revocations: Revocations) -> BearerVerifier:
    return BearerVerifier(rs256, issuer=BASE, audience=BASE, clock=clock, revoked=revocations)


def scopes(text: str = SCOPE) -> ScopeSet:
    result = parse_scopes(text)
    assert not result.invalid
    return result.scopes


def mint(keyring: Keyring, **overrides: Any) -> str:
    """A token for 王秀英 (Patient/pat-000001) through 健康助手, issued at T0."""
    args: dict[str, Any] = dict(
        issuer=BASE, audience=BASE, client_id="jiankang-zhushou", scope=scopes(),
        subject="Patient/pat-000001", fhir_user="Patient/pat-000001", patient="pat-000001",
        encounter=None, lifetime=3600, grant_id="grant-7f3a", now=T0)
    args.update(overrides)
    return issue_access_token(keyring, **args)


def claims(**overrides: Any) -> dict[str, Any]:
    """Raw RFC 9068 claims of a valid token, for tokens built by hand (then signed by us)."""
    base: dict[str, Any] = {
        "iss": BASE, "aud": BASE, "sub": "Patient/pat-000001", "client_id": "jiankang-zhushou",
        "scope": "launch/patient patient/Observation.rs", "iat": T0, "exp": T0 + 3600,
        "jti": "c3b1f0b2-5d8e-4c1a-9f0e-2b7d3a6e9c41", "patient": "pat-000001",
        "fhirUser": "Patient/pat-000001", "gid": "grant-7f3a",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    pad: Callable[[str], str] = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(header))),
            json.loads(base64.urlsafe_b64decode(pad(payload))))


def refused(verifier: BearerVerifier, header: str | None) -> BearerError:
    with pytest.raises(BearerError) as info:
        verifier.verify(header)
    return info.value


def assert_invalid_token(err: BearerError, description: str) -> None:
    assert (err.error, err.status, err.description) == ("invalid_token", 401, description)
    assert err.www_authenticate == (f'Bearer realm="yilian", error="invalid_token", '
                                    f'error_description="{description}"')


# -- issue + verify --------------------------------------------------------------------------------

def test_issue_and_verify_round_trip(ring: CountingKeyring, clock: Clock) -> None:
    revocations = Revocations()
    verifier = BearerVerifier(ring, issuer=BASE, audience=BASE, clock=clock,
                              revoked=revocations)
    token = mint(ring, encounter="enc-20261118-0031")
    header, body = decode(token)
    assert header == {"alg": ring.alg, "kid": header["kid"], "typ": "at+jwt"}
    infos = ring.keys()
    assert header["kid"] in {k.kid for k in infos if k.alg == ring.alg}
    assert body["iss"] == BASE and body["aud"] == BASE
    assert (body["iat"], body["exp"]) == (T0, T0 + 3600)
    assert "nbf" not in body
    assert body["gid"] == "grant-7f3a" and body["fhirUser"] == "Patient/pat-000001"
    assert len(base64.urlsafe_b64decode(body["jti"] + "==")) == 16  # 128 random bits

    principal = verifier.verify(f"Bearer {token}")
    assert isinstance(principal, Principal)
    assert principal == Principal(
        subject="Patient/pat-000001", client_id="jiankang-zhushou",
        scopes=tuple(scopes().tokens()), address=None, anonymous=False, scope_set=scopes(),
        patient="pat-000001", encounter="enc-20261118-0031", fhir_user="Patient/pat-000001",
        token_id=body["jti"], grant_id="grant-7f3a", expires_at=T0 + 3600)
    assert revocations.asked == [(body["jti"], "grant-7f3a")]


def test_each_token_gets_its_own_jti(rs256: Keyring) -> None:
    jtis = {decode(mint(rs256))[1]["jti"] for _ in range(50)}
    assert len(jtis) == 50


def test_backend_token_without_user_context_verifies(verifier: BearerVerifier,
                                                    rs256: Keyring) -> None:
    token = mint(rs256, client_id="yibao-jiesuan", subject="yibao-jiesuan",
                 scope=scopes("system/Patient.rs system/Claim.cruds"), fhir_user=None,
                 patient=None, grant_id=None, lifetime=300)
    principal = verifier.verify(f"Bearer {token}")
    assert (principal.subject, principal.patient, principal.grant_id, principal.expires_at) == (
        "yibao-jiesuan", None, None, T0 + 300)
    assert principal.scopes == ("system/Claim.cruds", "system/Patient.rs")


def test_not_before_is_written_and_honoured(verifier: BearerVerifier, rs256: Keyring,
                                            clock: Clock) -> None:
    token = mint(rs256, not_before=T0 + 600)
    assert decode(token)[1]["nbf"] == T0 + 600
    assert_invalid_token(refused(verifier, f"Bearer {token}"), NOT_YET_VALID)
    clock.now = T0 + 600
    assert verifier.verify(f"Bearer {token}").anonymous is False


@pytest.mark.parametrize("bad", [
    {"lifetime": 0}, {"lifetime": 3601}, {"lifetime": -5}, {"issuer": ""}, {"audience": ""},
    {"client_id": ""}, {"subject": ""}, {"patient": ""}, {"not_before": T0 + 3600},
    {"not_before": T0 - 1},
])
def test_issue_refuses_bad_arguments(rs256: Keyring, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        mint(rs256, **bad)


def test_issue_needs_a_parsed_scope_set(rs256: Keyring) -> None:
    with pytest.raises(TypeError):
        mint(rs256, scope="patient/*.rs")


def test_claims_object_serialises_with_rfc_and_smart_names() -> None:
    c = AccessTokenClaims(issuer=BASE, audience=(BASE, "https://fenyuan.zsyy.example.cn/fhir"),
                          subject="Practitioner/prac-0001", client_id="menzhen-app",
                          scope=scopes("launch user/*.rs"), issued_at=T0, expires_at=T0 + 60,
                          jti="j-1", encounter="enc-1")
    assert c.to_jwt() == {"iss": BASE, "aud": [BASE, "https://fenyuan.zsyy.example.cn/fhir"],
                          "sub": "Practitioner/prac-0001", "client_id": "menzhen-app",
                          "scope": "launch user/*.rs", "iat": T0, "exp": T0 + 60, "jti": "j-1",
                          "encounter": "enc-1"}


# -- the Authorization header (RFC 6750 §2.1) ------------------------------------------------------

def test_missing_header_gets_the_bare_challenge(verifier: BearerVerifier) -> None:
    err = refused(verifier, None)
    assert (err.error, err.status, err.description) == (None, 401, None)
    assert err.www_authenticate == 'Bearer realm="yilian"'


@pytest.mark.parametrize("header", ["", "   ", "Basic amlhbmdrYW5nOnNlY3JldA==", "Token abc",
                                    "Bearerabc.def", "DPoP eyJhbGciOiJFUzI1NiJ9.e30.c2ln"])
def test_other_schemes_get_the_bare_challenge(verifier: BearerVerifier, header: str) -> None:
    # RFC 6750 §3.1: a request using an unsupported authentication method gets no error code
    err = refused(verifier, header)
    assert (err.error, err.status) == (None, 401)
    assert err.www_authenticate == 'Bearer realm="yilian"'


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(verifier: BearerVerifier, rs256: Keyring,
                                    scheme: str) -> None:
    assert verifier.verify(f"{scheme} {mint(rs256)}").client_id == "jiankang-zhushou"


def test_surrounding_whitespace_and_several_spaces_are_tolerated(verifier: BearerVerifier,
                                                                 rs256: Keyring) -> None:
    assert not verifier.verify(f"  Bearer   {mint(rs256)} ").anonymous


@pytest.mark.parametrize(("header", "description"), [
    ("Bearer", "The Bearer credentials carry no access token"),
    ("Bearer    ", "The Bearer credentials carry no access token"),
    ("Bearer aaa.bbb.ccc ddd.eee.fff", "Exactly one access token is allowed"),
    ("Bearer aaa.bbb.ccc,ddd.eee.fff", "Exactly one access token is allowed"),
    ("Bearer aaa.bbb.ccc, Bearer ddd.eee.fff", "Exactly one access token is allowed"),
    ("Bearer\taaa.bbb.ccc", "A single space must separate Bearer and the access token"),
    ("Bearer aaa.bbb$ccc", "The access token contains characters that are not allowed"),
    ("Bearer 令牌.令牌.令牌", "The access token contains characters that are not allowed"),
    ("Bearer aaa.bbb.ccc=.d", "The access token contains characters that are not allowed"),
    ('Bearer "aaa.bbb.ccc"', "The access token contains characters that are not allowed"),
])
def test_malformed_credentials_are_invalid_request(verifier: BearerVerifier, header: str,
                                                   description: str) -> None:
    err = refused(verifier, header)
    assert (err.error, err.status, err.description) == ("invalid_request", 400, description)
    assert err.www_authenticate == (f'Bearer realm="yilian", error="invalid_request", '
                                    f'error_description="{description}"')


def test_b64token_padding_and_symbols_pass_the_syntax_check(verifier: BearerVerifier) -> None:
    # legal RFC 6750 syntax, so the token itself is judged (and is not ours)
    assert_invalid_token(refused(verifier, "Bearer a-b._~+/c=="), MALFORMED)


def test_oversized_token_is_refused_before_any_work(verifier: BearerVerifier,
                                                   rs256: CountingKeyring) -> None:
    before = rs256.verify_calls
    assert_invalid_token(refused(verifier, "Bearer " + "a" * 20_000), MALFORMED)
    assert rs256.verify_calls == before


# -- signature, key and type -----------------------------------------------------------------------

def test_alg_none_token_is_rejected(verifier: BearerVerifier, rs256: Keyring) -> None:
    kid = rs256.keys()[0].kid
    for alg in ("none", "None"):
        header = b64url_json({"alg": alg, "kid": kid, "typ": "at+jwt"})
        unsigned = f"{header}.{b64url_json(claims())}."
        assert_invalid_token(refused(verifier, f"Bearer {unsigned}"), NOT_OURS)


def test_hs256_token_signed_with_our_public_key_is_rejected(verifier: BearerVerifier,
                                                            rs256: Keyring) -> None:
    [public] = [k for k in rs256.jwks()["keys"] if k["alg"] == "RS256"]
    secret = RSAKey.import_key(public).as_pem(private=False)
    signing_input = (f"{b64url_json({'alg': 'HS256', 'kid': public['kid'], 'typ': 'at+jwt'})}."
                     f"{b64url_json(claims())}")
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert_invalid_token(refused(verifier, f"Bearer {signing_input}.{b64url(mac)}"), NOT_OURS)


def test_token_signed_by_a_key_not_in_the_keyring_is_rejected(verifier: BearerVerifier,
                                                              tmp_path: Path) -> None:
    other = Keyring(tmp_path / "another-hospital")
    other.ensure()
    err = refused(verifier, f"Bearer {mint(other)}")
    assert_invalid_token(err, NOT_OURS)
    assert other.keys()[0].kid not in err.www_authenticate  # nothing internal in the challenge
    assert other.keys()[0].kid in err.reason  # but the log line can say which key


def test_altered_token_is_rejected(verifier: BearerVerifier, rs256: Keyring) -> None:
    header, _, signature = mint(rs256).split(".")
    widened = b64url_json(claims(scope="system/*.cruds"))
    assert_invalid_token(refused(verifier, f"Bearer {header}.{widened}.{signature}"), NOT_OURS)


def test_id_token_is_not_an_access_token(verifier: BearerVerifier, rs256: Keyring) -> None:
    id_token = rs256.sign(claims(aud=BASE, nonce="n-0a7c"), typ="JWT")
    assert_invalid_token(refused(verifier, f"Bearer {id_token}"), NOT_ACCESS_TOKEN)
    untyped = rs256.sign(claims(), typ="")
    assert_invalid_token(refused(verifier, f"Bearer {untyped}"), NOT_ACCESS_TOKEN)


def test_application_at_jwt_typ_is_accepted(verifier: BearerVerifier, rs256: Keyring) -> None:
    token = rs256.sign(claims(), typ="application/at+jwt")  # RFC 9068 §2.1 allows both spellings
    assert verifier.verify(f"Bearer {token}").token_id == claims()["jti"]


@pytest.mark.parametrize("garbage", ["abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.e30",
                                     "e30.e30.e30.e30.e30"])
def test_garbage_is_invalid_token(verifier: BearerVerifier, garbage: str) -> None:
    err = refused(verifier, f"Bearer {garbage}")
    assert (err.error, err.status) == ("invalid_token", 401)
    assert err.description in FIXED_DESCRIPTIONS


# -- issuer, audience, time ------------------------------------------------------------------------

def test_token_from_another_issuer_is_rejected(verifier: BearerVerifier, rs256: Keyring) -> None:
    token = mint(rs256, issuer="https://fhir.another-hospital.example.cn/fhir")
    err = refused(verifier, f"Bearer {token}")
    assert_invalid_token(err, NOT_OURS)
    assert "another-hospital" not in err.www_authenticate


@pytest.mark.parametrize("aud", ["https://fhir.another-hospital.example.cn/fhir",
                                 "https://fhir.zsyy.example.cn/fhir/Patient",
                                 "https://fhir.zsyy.example.cn", "jiankang-zhushou"])
def test_token_for_another_audience_is_rejected(verifier: BearerVerifier, rs256: Keyring,
                                                aud: str) -> None:
    assert_invalid_token(refused(verifier, f"Bearer {mint(rs256, audience=aud)}"),
                         OTHER_AUDIENCE)
    listed = rs256.sign(claims(aud=[aud, "https://x.example.cn/fhir"]), typ=ACCESS_TOKEN_TYPE)
    assert_invalid_token(refused(verifier, f"Bearer {listed}"), OTHER_AUDIENCE)


def test_audience_may_be_a_list_and_ignores_a_trailing_slash(verifier: BearerVerifier,
                                                             rs256: Keyring) -> None:
    for aud in ([BASE, "https://fenyuan.zsyy.example.cn/fhir"], BASE + "/", [BASE + "/"]):
        token = rs256.sign(claims(aud=aud), typ=ACCESS_TOKEN_TYPE)
        assert verifier.verify(f"Bearer {token}").subject == "Patient/pat-000001"


def test_expired_token_gets_401_invalid_token(verifier: BearerVerifier, rs256: Keyring,
                                              clock: Clock) -> None:
    token = mint(rs256, lifetime=300)
    clock.now = T0 + 300 + 29  # within the 30 s leeway
    assert verifier.verify(f"Bearer {token}").expires_at == T0 + 300
    clock.now = T0 + 300 + 30
    err = refused(verifier, f"Bearer {token}")
    assert_invalid_token(err, EXPIRED)
    assert err.www_authenticate == ('Bearer realm="yilian", error="invalid_token", '
                                    'error_description="The access token expired"')


def test_leeway_is_configurable(rs256: Keyring, clock: Clock) -> None:
    strict = BearerVerifier(rs256, issuer=BASE, audience=BASE, clock=clock, leeway=0,
                            revoked=Revocations())
    token = mint(rs256, lifetime=60)
    clock.now = T0 + 60
    assert_invalid_token(refused(strict, f"Bearer {token}"), EXPIRED)


@pytest.mark.parametrize("field", ["nbf", "iat"])
def test_token_before_nbf_or_iat_is_rejected(verifier: BearerVerifier, rs256: Keyring,
                                             clock: Clock, field: str) -> None:
    token = rs256.sign(claims(**{field: T0 + 31}), typ=ACCESS_TOKEN_TYPE)
    assert_invalid_token(refused(verifier, f"Bearer {token}"), NOT_YET_VALID)
    clock.now = T0 + 1  # now within the leeway
    assert verifier.verify(f"Bearer {token}").subject == "Patient/pat-000001"


def test_lifetime_over_an_hour_is_not_one_of_ours(verifier: BearerVerifier,
                                                  rs256: Keyring) -> None:
    token = rs256.sign(claims(exp=T0 + 3601), typ=ACCESS_TOKEN_TYPE)
    assert_invalid_token(refused(verifier, f"Bearer {token}"), MALFORMED)


# -- claims ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["iss", "aud", "sub", "client_id", "scope", "iat", "exp", "jti"])
def test_token_missing_a_required_claim_is_rejected(verifier: BearerVerifier, rs256: Keyring,
                                                    name: str) -> None:
    token = rs256.sign(claims(**{name: _DROP}), typ=ACCESS_TOKEN_TYPE)
    assert_invalid_token(refused(verifier, f"Bearer {token}"), MALFORMED)


@pytest.mark.parametrize("bad", [
    {"iss": 42}, {"iss": ""}, {"aud": 7}, {"aud": []}, {"aud": [BASE, 7]}, {"aud": {"a": BASE}},
    {"sub": ["Patient/pat-000001"]}, {"sub": ""}, {"client_id": None}, {"client_id": 1},
    {"scope": ["patient/Observation.rs"]}, {"scope": None}, {"iat": "1795000000"},
    {"iat": True}, {"exp": str(T0 + 3600)}, {"exp": None}, {"exp": [T0 + 3600]},
    {"exp": float("inf")}, {"nbf": "now"}, {"jti": 12345}, {"patient": 1}, {"patient": ""},
    {"encounter": ["enc-1"]}, {"fhirUser": {"reference": "Patient/pat-000001"}}, {"gid": 9},
])
def test_claims_of_the_wrong_type_are_rejected(verifier: BearerVerifier, rs256: Keyring,
                                               bad: dict[str, Any]) -> None:
    token = rs256.sign(claims(**bad), typ=ACCESS_TOKEN_TYPE)
    assert_invalid_token(refused(verifier, f"Bearer {token}"), MALFORMED)


@pytest.mark.parametrize("scope", [
    "patient/Observation.sr", "patient/Observatoin.rs", "admin", "patient/*.rs?category=x",
    "openid patient/Observation.read?code=1",
])
def test_token_with_a_scope_we_cannot_parse_is_rejected(verifier: BearerVerifier,
                                                        rs256: Keyring, scope: str) -> None:
    token = rs256.sign(claims(scope=scope), typ=ACCESS_TOKEN_TYPE)
    assert_invalid_token(refused(verifier, f"Bearer {token}"), MALFORMED)


def test_numeric_dates_may_be_fractional(verifier: BearerVerifier, rs256: Keyring) -> None:
    token = rs256.sign(claims(iat=T0 + 0.5, exp=T0 + 600.25), typ=ACCESS_TOKEN_TYPE)
    assert verifier.verify(f"Bearer {token}").expires_at == T0 + 600.25


# -- revocation ------------------------------------------------------------------------------------

def test_revoked_jti_is_rejected(verifier: BearerVerifier, rs256: Keyring,
                                 revocations: Revocations) -> None:
    token, other = mint(rs256), mint(rs256)
    revocations.jtis.add(decode(token)[1]["jti"])
    assert_invalid_token(refused(verifier, f"Bearer {token}"), REVOKED)
    assert verifier.verify(f"Bearer {other}").token_id == decode(other)[1]["jti"]


def test_revoked_grant_rejects_every_token_of_the_grant(verifier: BearerVerifier,
                                                       rs256: Keyring,
                                                       revocations: Revocations) -> None:
    first, second = mint(rs256, grant_id="grant-a"), mint(rs256, grant_id="grant-a")
    unrelated = mint(rs256, grant_id="grant-b")
    revocations.grants.add("grant-a")
    for token in (first, second):
        assert_invalid_token(refused(verifier, f"Bearer {token}"), REVOKED)
    assert verifier.verify(f"Bearer {unrelated}").grant_id == "grant-b"


# -- WWW-Authenticate ------------------------------------------------------------------------------

def test_insufficient_scope_is_403_and_names_the_scope() -> None:
    err = BearerError.insufficient_scope("patient/Condition.rs", realm="yilian")
    assert (err.error, err.status) == ("insufficient_scope", 403)
    assert err.www_authenticate == (
        'Bearer realm="yilian", error="insufficient_scope", '
        'error_description="The access token does not grant this access", '
        'scope="patient/Condition.rs"')


def test_realm_is_configurable_and_must_be_sendable(rs256: Keyring) -> None:
    verifier = BearerVerifier(rs256, issuer=BASE, audience=BASE, realm="zsyy-fhir",
                              revoked=Revocations())
    assert refused(verifier, None).www_authenticate == 'Bearer realm="zsyy-fhir"'
    for realm in ('yi"lian', "yi\\lian", "医链"):
        with pytest.raises(ValueError):
            BearerVerifier(rs256, issuer=BASE, audience=BASE, realm=realm, revoked=Revocations())


def test_challenge_attributes_cannot_carry_quotes() -> None:
    with pytest.raises(ValueError):
        BearerError("invalid_token", 'bad "token"')


# -- the verified-token cache ----------------------------------------------------------------------

def test_cache_hit_skips_signature_work_but_still_sees_revocation(
        rs256: CountingKeyring, clock: Clock, revocations: Revocations) -> None:
    verifier = BearerVerifier(rs256, issuer=BASE, audience=BASE, clock=clock,
                              revoked=revocations)
    token = mint(rs256)
    jti = decode(token)[1]["jti"]
    before = rs256.verify_calls
    first = verifier.verify(f"Bearer {token}")
    for _ in range(5):
        assert verifier.verify(f"bearer {token}") is first
    assert rs256.verify_calls == before + 1
    assert len(revocations.asked) == 6  # revocation asked on every request, hits included

    revocations.jtis.add(jti)
    assert_invalid_token(refused(verifier, f"Bearer {token}"), REVOKED)
    assert rs256.verify_calls == before + 1  # refused from the cache entry, no new verify
    assert verifier.cache_len() == 0  # and the entry is gone


def test_cache_entry_lives_at_most_sixty_seconds(rs256: CountingKeyring, clock: Clock) -> None:
    verifier = BearerVerifier(rs256, issuer=BASE, audience=BASE, clock=clock,
                              revoked=Revocations())
    token = mint(rs256)
    before = rs256.verify_calls
    verifier.verify(f"Bearer {token}")
    clock.now = T0 + 59
    verifier.verify(f"Bearer {token}")
    assert rs256.verify_calls == before + 1
    clock.now = T0 + 60
    verifier.verify(f"Bearer {token}")
    assert rs256.verify_calls == before + 2


def test_cache_entry_ends_at_the_tokens_exp(rs256: CountingKeyring, clock: Clock) -> None:
    verifier = BearerVerifier(rs256, issuer=BASE, audience=BASE, clock=clock,
                              revoked=Revocations())
    token = mint(rs256, lifetime=20)
    before = rs256.verify_calls
    verifier.verify(f"Bearer {token}")
    clock.now = T0 + 20  # exp reached: the cache no longer vouches, full verify (leeway) again
    verifier.verify(f"Bearer {token}")
    assert rs256.verify_calls == before + 2
    assert verifier.cache_len() == 0  # past exp (within leeway): accepted but not cached
    clock.now = T0 + 50
    assert_invalid_token(refused(verifier, f"Bearer {token}"), EXPIRED)


def test_cache_is_bounded_and_evicts_the_least_recently_used(rs256: CountingKeyring,
                                                            clock: Clock) -> None:
    verifier = BearerVerifier(rs256, issuer=BASE, audience=BASE, clock=clock,
                              revoked=Revocations(), cache_size=3)
    tokens = [mint(rs256) for _ in range(5)]
    for token in tokens[:3]:
        verifier.verify(f"Bearer {token}")
    verifier.verify(f"Bearer {tokens[0]}")  # touch: tokens[1] is now the oldest
    for token in tokens[3:]:
        verifier.verify(f"Bearer {token}")
    assert verifier.cache_len() == 3
    before = rs256.verify_calls
    verifier.verify(f"Bearer {tokens[0]}")  # kept
    verifier.verify(f"Bearer {tokens[4]}")  # kept
    assert rs256.verify_calls == before
    verifier.verify(f"Bearer {tokens[1]}")  # evicted: verified again
    assert rs256.verify_calls == before + 1
    assert verifier.cache_len() == 3


def test_refused_tokens_are_not_cached(verifier: BearerVerifier, rs256: CountingKeyring) -> None:
    token = mint(rs256, audience="https://fhir.another-hospital.example.cn/fhir")
    before = rs256.verify_calls
    for _ in range(3):
        refused(verifier, f"Bearer {token}")
    assert rs256.verify_calls == before + 3
    assert verifier.cache_len() == 0


def test_cache_size_zero_disables_the_cache(rs256: CountingKeyring, clock: Clock) -> None:
    verifier = BearerVerifier(rs256, issuer=BASE, audience=BASE, clock=clock,
                              revoked=Revocations(), cache_size=0)
    token = mint(rs256)
    before = rs256.verify_calls
    verifier.verify(f"Bearer {token}")
    verifier.verify(f"Bearer {token}")
    assert rs256.verify_calls == before + 2


# -- Principal stays backwards compatible ----------------------------------------------------------

def test_principal_defaults_are_those_of_an_anonymous_caller() -> None:
    p = Principal(address="10.1.2.3")
    assert p.anonymous and p.subject is None and p.scopes == ()
    assert (p.scope_set, p.patient, p.encounter, p.fhir_user, p.token_id, p.grant_id,
            p.expires_at) == (None,) * 7
