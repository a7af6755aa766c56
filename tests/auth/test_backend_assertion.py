"""SMART Backend Services client assertions (RFC 7523): real keys, a real SQLite AuthStore, and
client JWK Sets served by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry

from app.auth.clients import register_client
from app.auth.rfc7523_backend import (
    ACCEPTED_ALGS,
    JWKS_MAX_AGE_SECONDS,
    JWKS_MAX_BYTES,
    JWKS_MIN_REFETCH_SECONDS,
    JWKS_TIMEOUT_SECONDS,
    JWT_BEARER_ASSERTION_TYPE,
    HttpJwksFetcher,
    JwksFetchError,
    OAuthError,
    check_client_assertion,
)
from app.auth.sqlite_store import SqliteAuthStore
from app.auth.store import Client

TOKEN_URL = "https://fhir.zsyy.cn/auth/token"
NOW = 1_795_000_000.0
INSURER = "pingan-claims"  # 平安健康保险 理赔系统
REGISTRY = JWSRegistry(algorithms=["RS256", "RS384", "ES256", "ES384"])


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "pingan-rsa-2026"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "pingan-ec-2026"})


@pytest.fixture(scope="module")
def other_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "taikang-rsa-2026"})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SqliteAuthStore]:
    s = SqliteAuthStore(tmp_path / "auth.sqlite3", clock)
    yield s
    s.close()


def _jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@pytest.fixture
def insurer(store: SqliteAuthStore, rsa_key: RSAKey, ec_key: ECKey, other_key: RSAKey) -> Client:
    register_client(store, name="泰康保险 数据平台", kind="asymmetric", client_id="taikang-data",
                    jwks=_jwks(other_key))
    return register_client(store, name="平安健康保险 理赔系统", name_en="Ping An claims",
                           kind="asymmetric", client_id=INSURER,
                           jwks=_jwks(rsa_key, ec_key)).client


@pytest.fixture
def fetcher() -> Iterator[HttpJwksFetcher]:
    f = HttpJwksFetcher()
    yield f
    f.close()


def _claims(**over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"iss": INSURER, "sub": INSURER, "aud": TOKEN_URL,
                              "exp": int(NOW) + 240, "iat": int(NOW), "jti": str(uuid.uuid4())}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key: RSAKey | ECKey, alg: str, claims: dict[str, Any] | None = None,
          **header: Any) -> str:
    protected = {"alg": alg, "kid": key.kid, "typ": "JWT", **header}
    protected = {k: v for k, v in protected.items() if v is not None}
    payload = json.dumps(claims if claims is not None else _claims())
    return jws.serialize_compact(protected, payload, key, algorithms=[alg], registry=REGISTRY)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _form(assertion: str, **over: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            "client_assertion_type": JWT_BEARER_ASSERTION_TYPE, "client_assertion": assertion,
            **over}


def _check(form: dict[str, str], store: SqliteAuthStore, fetcher: HttpJwksFetcher,
           clock: Clock) -> Client:
    return check_client_assertion(form, token_url=TOKEN_URL, store=store, jwks_fetcher=fetcher,
                                  clock=clock)


def _refused(form: dict[str, str], store: SqliteAuthStore, fetcher: HttpJwksFetcher,
             clock: Clock, *, error: str = "invalid_client") -> OAuthError:
    with pytest.raises(OAuthError) as info:
        _check(form, store, fetcher, clock)
    exc = info.value
    assert exc.error == error
    assert exc.status_code == (401 if error == "invalid_client" else 400)
    for internal in ("Traceback", "joserfc", "httpx", "sqlite", "Error("):
        assert internal not in exc.description
    return exc


# -- accepted ------------------------------------------------------------------------------------


def test_rs384_assertion_from_registered_jwks_authenticates_the_client(
        insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore, fetcher: HttpJwksFetcher,
        clock: Clock) -> None:
    client = _check(_form(_sign(rsa_key, "RS384")), store, fetcher, clock)
    assert client.client_id == INSURER and client.kind == "asymmetric"
    assert fetcher.fetches == 0


def test_es384_assertion_with_aud_list_and_no_typ_authenticates_the_client(
        insurer: Client, ec_key: ECKey, store: SqliteAuthStore, fetcher: HttpJwksFetcher,
        clock: Clock) -> None:
    token = _sign(ec_key, "ES384", _claims(aud=["https://other.example.cn", TOKEN_URL]),
                  typ=None)
    assert _check(_form(token), store, fetcher, clock).client_id == INSURER


def test_accepted_algorithms_are_exactly_rs384_and_es384() -> None:
    assert ACCEPTED_ALGS == ("RS384", "ES384")


# -- request-level refusals ----------------------------------------------------------------------


def test_wrong_client_assertion_type_is_invalid_request(
        insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore, fetcher: HttpJwksFetcher,
        clock: Clock) -> None:
    form = _form(_sign(rsa_key, "RS384"),
                 client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
    exc = _refused(form, store, fetcher, clock, error="invalid_request")
    assert JWT_BEARER_ASSERTION_TYPE in exc.description
    _refused({"grant_type": "client_credentials"}, store, fetcher, clock, error="invalid_request")
    _refused(_form(""), store, fetcher, clock, error="invalid_request")


def test_garbage_assertion_is_invalid_client(insurer: Client, store: SqliteAuthStore,
                                             fetcher: HttpJwksFetcher, clock: Clock) -> None:
    for junk in ("not-a-jwt", "a.b.c", "eyJhbGciOiJSUzM4NCJ9.%%%.xx", "x" * 20_000):
        _refused(_form(junk), store, fetcher, clock)


# -- algorithm refusals --------------------------------------------------------------------------


def test_alg_none_is_refused(insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore,
                             fetcher: HttpJwksFetcher, clock: Clock) -> None:
    header = _b64(json.dumps({"alg": "none", "kid": rsa_key.kid, "typ": "JWT"}).encode())
    token = f"{header}.{_b64(json.dumps(_claims()).encode())}."
    exc = _refused(_form(token), store, fetcher, clock)
    assert "'none'" in exc.description and "RS384 or ES384" in exc.description


def test_hs256_signed_with_the_public_key_is_refused(
        insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore, fetcher: HttpJwksFetcher,
        clock: Clock) -> None:
    # The classic key-confusion forgery: HMAC keyed with the (public) PEM the server holds.
    public_pem = rsa_key.as_pem(private=False)
    signing_input = (_b64(json.dumps({"alg": "HS256", "kid": rsa_key.kid}).encode()) + "."
                     + _b64(json.dumps(_claims()).encode()))
    sig = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    exc = _refused(_form(f"{signing_input}.{_b64(sig)}"), store, fetcher, clock)
    assert "'HS256'" in exc.description


def test_rs256_and_es256_are_refused_though_correctly_signed(
        insurer: Client, rsa_key: RSAKey, ec_key: ECKey, store: SqliteAuthStore,
        fetcher: HttpJwksFetcher, clock: Clock) -> None:
    exc = _refused(_form(_sign(rsa_key, "RS256")), store, fetcher, clock)
    assert "'RS256'" in exc.description and "RS384 or ES384" in exc.description
    p256 = ECKey.generate_key("P-256", parameters={"kid": ec_key.kid})
    _refused(_form(_sign(p256, "ES256")), store, fetcher, clock)


def test_key_type_must_fit_the_algorithm(insurer: Client, rsa_key: RSAKey, ec_key: ECKey,
                                         store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                                         clock: Clock) -> None:
    # ES384 header naming the client's RSA key: refused before any verification is attempted.
    token = _sign(ec_key, "ES384", kid=rsa_key.kid)
    exc = _refused(_form(token), store, fetcher, clock)
    assert "needs kty 'EC'" in exc.description


# -- key and client refusals ---------------------------------------------------------------------


def test_unknown_kid_is_refused(insurer: Client, store: SqliteAuthStore,
                                fetcher: HttpJwksFetcher, clock: Clock) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "pingan-rsa-2027"})
    exc = _refused(_form(_sign(stranger, "RS384")), store, fetcher, clock)
    assert "'pingan-rsa-2027'" in exc.description


def test_missing_kid_is_refused(insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore,
                                fetcher: HttpJwksFetcher, clock: Clock) -> None:
    token = jws.serialize_compact({"alg": "RS384", "typ": "JWT"}, json.dumps(_claims()), rsa_key,
                                  algorithms=["RS384"], registry=REGISTRY)
    assert "no kid" in _refused(_form(token), store, fetcher, clock).description


def test_kid_of_another_client_is_refused(insurer: Client, other_key: RSAKey,
                                          store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                                          clock: Clock) -> None:
    # Signed with 泰康's registered key but claiming to be 平安.
    _refused(_form(_sign(other_key, "RS384")), store, fetcher, clock)
    # ... and a token naming 平安's kid but signed with 泰康's key fails the signature.
    exc = _refused(_form(_sign(other_key, "RS384", kid="pingan-rsa-2026")), store, fetcher,
                   clock)
    assert "signature does not verify" in exc.description


def test_iss_differs_from_sub_is_refused(insurer: Client, rsa_key: RSAKey,
                                         store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                                         clock: Clock) -> None:
    token = _sign(rsa_key, "RS384", _claims(sub="taikang-data"))
    assert "'sub' must equal" in _refused(_form(token), store, fetcher, clock).description
    token = _sign(rsa_key, "RS384", _claims(iss=None, sub=None))
    _refused(_form(token), store, fetcher, clock)


def test_client_id_parameter_must_match_iss(insurer: Client, rsa_key: RSAKey,
                                            store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                                            clock: Clock) -> None:
    _refused(_form(_sign(rsa_key, "RS384"), client_id="taikang-data"), store, fetcher, clock)
    assert _check(_form(_sign(rsa_key, "RS384"), client_id=INSURER), store, fetcher,
                  clock).client_id == INSURER


def test_unknown_client_is_refused(insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore,
                                   fetcher: HttpJwksFetcher, clock: Clock) -> None:
    token = _sign(rsa_key, "RS384", _claims(iss="renshou-claims", sub="renshou-claims"))
    assert "not registered" in _refused(_form(token), store, fetcher, clock).description


def test_symmetric_and_public_clients_cannot_use_assertions(
        insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore, fetcher: HttpJwksFetcher,
        clock: Clock) -> None:
    register_client(store, name="掌上医院", kind="symmetric", client_id="zhangshang",
                    redirect_uris=["https://app.zsyy.cn/cb"])
    register_client(store, name="健康助手", kind="public", client_id="jiankang",
                    redirect_uris=["https://app.jiankang.cn/cb"])
    for cid in ("zhangshang", "jiankang"):
        token = _sign(rsa_key, "RS384", _claims(iss=cid, sub=cid))
        exc = _refused(_form(token), store, fetcher, clock)
        assert "private_key_jwt" in exc.description


# -- claim refusals ------------------------------------------------------------------------------


def test_wrong_aud_is_refused(insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore,
                              fetcher: HttpJwksFetcher, clock: Clock) -> None:
    for aud in ("https://fhir.zsyy.cn/fhir", TOKEN_URL + "/", ["https://fhir.zsyy.cn/fhir"], None,
                42):
        token = _sign(rsa_key, "RS384", _claims(aud=aud))
        assert TOKEN_URL in _refused(_form(token), store, fetcher, clock).description


def test_expired_assertion_is_refused(insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore,
                                      fetcher: HttpJwksFetcher, clock: Clock) -> None:
    token = _sign(rsa_key, "RS384", _claims(exp=int(NOW) - 120, iat=int(NOW) - 400))
    assert "expired" in _refused(_form(token), store, fetcher, clock).description
    # The same assertion, valid when it was made, expires as the clock moves on.
    token = _sign(rsa_key, "RS384")
    clock.now += 301 + 60
    _refused(_form(token), store, fetcher, clock)


def test_assertion_exp_over_five_minutes_is_refused(
        insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore, fetcher: HttpJwksFetcher,
        clock: Clock) -> None:
    token = _sign(rsa_key, "RS384", _claims(exp=int(NOW) + 3600))
    assert "300 s" in _refused(_form(token), store, fetcher, clock).description
    _refused(_form(_sign(rsa_key, "RS384", _claims(exp=int(NOW) + 361))), store, fetcher, clock)
    # Exactly five minutes is fine.
    _check(_form(_sign(rsa_key, "RS384", _claims(exp=int(NOW) + 300))), store, fetcher, clock)


def test_missing_or_malformed_exp_is_refused(insurer: Client, rsa_key: RSAKey,
                                             store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                                             clock: Clock) -> None:
    for exp in (None, "1795000240", True):
        _refused(_form(_sign(rsa_key, "RS384", _claims(exp=exp))), store, fetcher, clock)


def test_iat_or_nbf_in_the_future_is_refused(insurer: Client, rsa_key: RSAKey,
                                             store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                                             clock: Clock) -> None:
    _refused(_form(_sign(rsa_key, "RS384", _claims(iat=int(NOW) + 200))), store, fetcher, clock)
    _refused(_form(_sign(rsa_key, "RS384", _claims(nbf=int(NOW) + 200))), store, fetcher, clock)


def test_missing_jti_is_refused(insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore,
                                fetcher: HttpJwksFetcher, clock: Clock) -> None:
    for jti in (None, "", 12345):
        token = _sign(rsa_key, "RS384", _claims(jti=jti))
        assert "jti" in _refused(_form(token), store, fetcher, clock).description


def test_typ_other_than_jwt_is_refused(insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore,
                                       fetcher: HttpJwksFetcher, clock: Clock) -> None:
    _refused(_form(_sign(rsa_key, "RS384", typ="at+jwt")), store, fetcher, clock)
    _check(_form(_sign(rsa_key, "RS384", typ="jwt")), store, fetcher, clock)


def test_backend_assertion_replay_is_refused(insurer: Client, rsa_key: RSAKey,
                                             store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                                             clock: Clock) -> None:
    token = _sign(rsa_key, "RS384")
    _check(_form(token), store, fetcher, clock)
    exc = _refused(_form(token), store, fetcher, clock)
    assert "already used" in exc.description
    # A new assertion reusing the jti (different exp, new signature) is a replay too.
    jti = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["jti"]
    _refused(_form(_sign(rsa_key, "RS384", _claims(jti=jti, exp=int(NOW) + 200))), store,
             fetcher, clock)


def test_jti_is_per_client(insurer: Client, rsa_key: RSAKey, other_key: RSAKey,
                           store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                           clock: Clock) -> None:
    _check(_form(_sign(rsa_key, "RS384", _claims(jti="claim-20261123-0001"))), store, fetcher,
           clock)
    taikang = _claims(iss="taikang-data", sub="taikang-data", jti="claim-20261123-0001")
    assert _check(_form(_sign(other_key, "RS384", taikang)), store, fetcher,
                  clock).client_id == "taikang-data"


def test_replayed_assertion_from_two_threads_exactly_one_wins(
        insurer: Client, rsa_key: RSAKey, store: SqliteAuthStore, fetcher: HttpJwksFetcher,
        clock: Clock) -> None:
    for _ in range(5):
        token = _sign(rsa_key, "RS384")
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def attempt(token: str = token, barrier: threading.Barrier = barrier,
                    outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                _check(_form(token), store, fetcher, clock)
                outcomes.append("ok")
            except OAuthError as exc:
                outcomes.append(exc.error)

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["invalid_client", "ok"]


def test_an_invalid_assertion_does_not_burn_its_jti(insurer: Client, rsa_key: RSAKey,
                                                   store: SqliteAuthStore,
                                                   fetcher: HttpJwksFetcher,
                                                   clock: Clock) -> None:
    claims = _claims(jti="claim-20261123-0002")
    _refused(_form(_sign(rsa_key, "RS384", {**claims, "aud": "https://evil.example"})), store,
             fetcher, clock)
    _check(_form(_sign(rsa_key, "RS384", claims)), store, fetcher, clock)


# -- jku and jwks_uri ----------------------------------------------------------------------------


@dataclass
class Served:
    """What the local JWKS server answers for each path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0  # sleep between 1 kB chunks, sent without Content-Length
    requests: int = 0


class JwksServer:
    def __init__(self) -> None:
        self.paths: dict[str, Served] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served = server.paths.get(self.path)
                if served is None:
                    self.send_error(404)
                    return
                served.requests += 1
                time.sleep(served.delay)
                self.send_response(served.status)
                self.send_header("Content-Type", "application/json")
                for name, value in served.headers.items():
                    self.send_header(name, value)
                if served.chunk_delay:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for i in range(0, len(served.body), 1024):
                        self.wfile.write(served.body[i:i + 1024])
                        self.wfile.flush()
                        time.sleep(served.chunk_delay)
                    return
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes | dict[str, Any], **kw: Any) -> str:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.paths[path] = Served(body=data, **kw)
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    s = JwksServer()
    yield s
    s.close()


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _uri_client(store: SqliteAuthStore, uri: str, client_id: str = "guoshou-bulk") -> str:
    register_client(store, name="国寿 批量数据导出", kind="asymmetric", client_id=client_id,
                    jwks_uri=uri)
    return client_id


def _uri_claims(cid: str, **over: Any) -> dict[str, Any]:
    return _claims(iss=cid, sub=cid, **over)


def test_fetcher_limits_are_the_planned_ones() -> None:
    assert (JWKS_TIMEOUT_SECONDS, JWKS_MAX_BYTES, JWKS_MAX_AGE_SECONDS,
            JWKS_MIN_REFETCH_SECONDS) == (3.0, 65_536, 3600.0, 60.0)


def test_jwks_uri_key_rotation_refetches_once_per_minute_on_kid_miss(
        jwks_server: JwksServer, store: SqliteAuthStore, rsa_key: RSAKey, ec_key: ECKey,
        clock: Clock) -> None:
    mono = Monotonic()
    fetcher = HttpJwksFetcher(clock=mono)
    try:
        uri = jwks_server.serve("/guoshou/jwks.json", _jwks(rsa_key))
        cid = _uri_client(store, uri)
        served = jwks_server.paths["/guoshou/jwks.json"]

        def ok(key: RSAKey | ECKey, alg: str) -> None:
            assert _check(_form(_sign(key, alg, _uri_claims(cid))), store, fetcher,
                          clock).client_id == cid

        ok(rsa_key, "RS384")
        ok(rsa_key, "RS384")  # cached
        assert served.requests == 1
        # The client rotates to its EC key.
        jwks_server.serve("/guoshou/jwks.json", _jwks(rsa_key, ec_key))
        served = jwks_server.paths["/guoshou/jwks.json"]
        mono.now += 10
        # Within a minute of the last fetch a kid miss does not refetch.
        exc = _refused(_form(_sign(ec_key, "ES384", _uri_claims(cid))), store, fetcher, clock)
        assert "'pingan-ec-2026'" in exc.description and "jwks_uri" in exc.description
        assert served.requests == 0
        mono.now += JWKS_MIN_REFETCH_SECONDS
        ok(ec_key, "ES384")  # the kid miss triggers one refetch
        assert served.requests == 1
        stranger = ECKey.generate_key("P-384", parameters={"kid": "guoshou-ec-2027"})
        mono.now += 5
        _refused(_form(_sign(stranger, "ES384", _uri_claims(cid))), store, fetcher, clock)
        _refused(_form(_sign(stranger, "ES384", _uri_claims(cid))), store, fetcher, clock)
        assert served.requests == 1  # second and third miss within the minute: no refetch
        ok(rsa_key, "RS384")
        assert served.requests == 1
        # After the cache lifetime (no Cache-Control here: 1 h) any use refetches.
        mono.now += JWKS_MAX_AGE_SECONDS
        ok(rsa_key, "RS384")
        assert served.requests == 2
        assert fetcher.fetches == 3
    finally:
        fetcher.close()


def test_jwks_uri_cache_control_max_age_is_honoured_within_bounds(
        jwks_server: JwksServer, rsa_key: RSAKey) -> None:
    mono = Monotonic()
    fetcher = HttpJwksFetcher(clock=mono)
    try:
        short = jwks_server.serve("/short", _jwks(rsa_key),
                                  headers={"Cache-Control": "public, max-age=120"})
        long = jwks_server.serve("/long", _jwks(rsa_key),
                                 headers={"Cache-Control": "max-age=86400"})
        kid = str(rsa_key.kid)
        for uri in (short, long):
            fetcher.get(uri, kid=kid)
        mono.now += 121
        for uri in (short, long):
            fetcher.get(uri, kid=kid)
        assert jwks_server.paths["/short"].requests == 2
        assert jwks_server.paths["/long"].requests == 1
        mono.now += 3600
        fetcher.get(long, kid=kid)
        assert jwks_server.paths["/long"].requests == 2  # capped at one hour
    finally:
        fetcher.close()


def test_jku_equal_to_registered_jwks_uri_is_accepted_and_any_other_refused(
        jwks_server: JwksServer, store: SqliteAuthStore, rsa_key: RSAKey,
        fetcher: HttpJwksFetcher, clock: Clock) -> None:
    uri = jwks_server.serve("/guoshou/jwks.json", _jwks(rsa_key))
    cid = _uri_client(store, uri)
    assert _check(_form(_sign(rsa_key, "RS384", _uri_claims(cid), jku=uri)), store, fetcher,
                  clock).client_id == cid
    evil = jwks_server.serve("/evil/jwks.json", _jwks(rsa_key))
    for jku in (evil, uri + "?", uri.replace("127.0.0.1", "localhost")):
        exc = _refused(_form(_sign(rsa_key, "RS384", _uri_claims(cid), jku=jku)), store,
                       fetcher, clock)
        assert "jku" in exc.description
    assert jwks_server.paths["/evil/jwks.json"].requests == 0


def test_jku_on_a_client_registered_with_inline_jwks_is_refused(
        insurer: Client, jwks_server: JwksServer, rsa_key: RSAKey, store: SqliteAuthStore,
        fetcher: HttpJwksFetcher, clock: Clock) -> None:
    jku = jwks_server.serve("/pingan/jwks.json", _jwks(rsa_key))
    exc = _refused(_form(_sign(rsa_key, "RS384", jku=jku)), store, fetcher, clock)
    assert "jku" in exc.description
    assert jwks_server.paths["/pingan/jwks.json"].requests == 0


@pytest.mark.parametrize(("served", "message"), [
    ({"body": b"{\"keys\": [" + b" " * (JWKS_MAX_BYTES + 10) + b"]}"}, "larger than 65536 bytes"),
    ({"body": b"{\"keys\": [" + b" " * (JWKS_MAX_BYTES + 10) + b"]}", "chunk_delay": 0.001},
     "larger than 65536 bytes"),
    ({"body": b"<html><body>502 Bad Gateway</body></html>"}, "not JSON"),
    ({"body": b"[1, 2, 3]"}, "not a JSON object"),
    ({"body": b"{}", "status": 404}, "HTTP 404"),
    ({"body": b"", "status": 302, "headers": {"Location": "http://10.0.0.8/jwks.json"}},
     "redirects are not followed"),
    ({"body": b"{\"keys\": []}", "delay": 1.5}, "not served within 0.5 s"),
    ({"body": json.dumps({"keys": [], "pad": "x" * 4000}).encode(), "chunk_delay": 0.2},
     "not served within 0.5 s"),
], ids=["oversized", "oversized-chunked", "html", "not-object", "404", "redirect", "slow",
        "dribbling"])
def test_unusable_jwks_documents_give_a_clear_invalid_client(
        jwks_server: JwksServer, store: SqliteAuthStore, rsa_key: RSAKey, clock: Clock,
        served: dict[str, Any], message: str) -> None:
    fetcher = HttpJwksFetcher(timeout=0.5)
    try:
        served = dict(served)
        uri = jwks_server.serve("/guoshou/jwks.json", served.pop("body"), **served)
        cid = _uri_client(store, uri)
        started = time.monotonic()
        exc = _refused(_form(_sign(rsa_key, "RS384", _uri_claims(cid))), store, fetcher, clock)
        assert time.monotonic() - started < 2.0
        assert "jwks_uri could not be used" in exc.description and message in exc.description
        assert "10.0.0.8" not in exc.description
        # A failed fetch is not retried for a minute: the next request fails fast, no request.
        before = jwks_server.paths["/guoshou/jwks.json"].requests
        _refused(_form(_sign(rsa_key, "RS384", _uri_claims(cid))), store, fetcher, clock)
        assert jwks_server.paths["/guoshou/jwks.json"].requests == before
    finally:
        fetcher.close()


def test_unreachable_jwks_uri_gives_invalid_client(store: SqliteAuthStore, rsa_key: RSAKey,
                                                   fetcher: HttpJwksFetcher,
                                                   clock: Clock) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    cid = _uri_client(store, f"http://127.0.0.1:{port}/jwks.json")
    exc = _refused(_form(_sign(rsa_key, "RS384", _uri_claims(cid))), store, fetcher, clock)
    assert "connection failed" in exc.description


def test_fetcher_refuses_plain_http_to_a_non_loopback_host(fetcher: HttpJwksFetcher) -> None:
    with pytest.raises(JwksFetchError, match="https"):
        fetcher.get("http://jwks.pingan.example.cn/jwks.json", kid="k")
    with pytest.raises(JwksFetchError, match="https"):
        fetcher.get("ftp://127.0.0.1/jwks.json", kid="k")
    assert fetcher.fetches == 0


def test_fetched_jwks_skips_private_and_duplicate_keys(
        jwks_server: JwksServer, store: SqliteAuthStore, rsa_key: RSAKey, ec_key: ECKey,
        fetcher: HttpJwksFetcher, clock: Clock) -> None:
    doc = {"keys": [rsa_key.as_dict(private=True), ec_key.as_dict(private=False),
                    {**ec_key.as_dict(private=False), "x": ec_key.as_dict()["y"]},
                    {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]}
    cid = _uri_client(store, jwks_server.serve("/guoshou/jwks.json", doc))
    # A published private key is never used; a kid listed twice is ambiguous (SMART step 3).
    _refused(_form(_sign(rsa_key, "RS384", _uri_claims(cid))), store, fetcher, clock)
    _refused(_form(_sign(ec_key, "ES384", _uri_claims(cid))), store, fetcher, clock)


def test_es384_needs_a_p384_key(store: SqliteAuthStore, fetcher: HttpJwksFetcher,
                                clock: Clock) -> None:
    p256 = ECKey.generate_key("P-256", parameters={"kid": "renshou-ec-p256"})
    register_client(store, name="人寿 理赔接口", kind="asymmetric", client_id="renshou-claims",
                    jwks=_jwks(p256))
    header = _b64(json.dumps({"alg": "ES384", "kid": p256.kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(iss="renshou-claims", sub="renshou-claims")).encode())
    token = f"{header}.{payload}.{_b64(b'0' * 96)}"
    exc = _refused(_form(token), store, fetcher, clock)
    assert "crv 'P-384'" in exc.description
