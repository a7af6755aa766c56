"""SMART Backend Services client authentication: RFC 7523 §2.2/§3 JWT client assertions.

Implements SMART App Launch 2.2 "Client Authentication: Asymmetric (public key)"
(`client-confidential-asymmetric`, used by Backend Services), on top of RFC 7521 §4.2 (the
`client_assertion_type` / `client_assertion` parameters) and RFC 7523 §3 (the processing rules
for the JWT). `check_client_assertion` is what the token endpoint calls for a
`client_credentials` request; it returns the authenticated `Client` or raises `OAuthError`.

Decisions (plan §5 and §7, SMART "Signature Verification"):

- Algorithms: exactly RS384 and ES384. SMART requires every client to support both and the
  server to validate at least one; other algorithms are a MAY. Accepting only these two loses no
  conforming client, keeps the verifier surface small and is what discovery will advertise in
  `token_endpoint_auth_signing_alg_values_supported`. RS256/ES256, HS* and `none` are refused
  before any key is touched, and the joserfc registry itself allows only these two.
- Key selection: `kid` is required; the key is the single registered key with that `kid` whose
  `kty` (and EC curve) fits `alg`. A `jku` header must equal the registered `jwks_uri` exactly
  (a client registered with an inline JWK Set therefore cannot send one); the keys always come
  from the registration, never from a URL the assertion names.
- `typ`: SMART 2.x lists `typ: JWT` as required, STU1 did not and some backend clients still
  omit it; an absent `typ` is accepted, any value other than JWT (case-insensitive, optional
  `application/` prefix, RFC 7515 §4.1.9) is refused, so an access token or id_token cannot be
  replayed as an assertion.
- Lifetime: `exp` required, not past, and at most 300 s ahead (SMART) plus `LEEWAY_SECONDS`
  clock skew; `iat` and `nbf`, when present, must not lie in the future beyond the leeway.
- Replay: `jti` is remembered per client until the assertion can no longer be accepted
  (`AuthStore.remember_jti`, an atomic insert-or-fail); a second use is refused. It is recorded
  only after the signature and every other claim checked out, so nobody can burn another
  client's `jti` values with unsigned junk.

JWK Sets published at a `jwks_uri` are fetched by `HttpJwksFetcher` (httpx): https only
(http on a loopback host for development), no redirects, 3 s timeout, 64 kB cap, cached for the
response's `Cache-Control: max-age` clamped to 1 min..1 h, and refetched at most once a minute
when an assertion names a `kid` the cached set lacks (key rotation).

Grant-specific rules (which grant types the client may use, `system/` scopes only) belong to the
grant, not here.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from joserfc import errors as jose_errors
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry

from app.auth.clients import LOOPBACK_HOSTS
from app.auth.store import AuthStore, Client

JWT_BEARER_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACCEPTED_ALGS: tuple[str, ...] = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_SECONDS = 300  # SMART: exp "no more than five minutes in the future"
LEEWAY_SECONDS = 60  # clock skew between the client and us
MAX_ASSERTION_BYTES = 16_384
MAX_JTI_CHARS = 256

JWKS_TIMEOUT_SECONDS = 3.0
JWKS_MAX_BYTES = 65_536
JWKS_MAX_AGE_SECONDS = 3600.0
JWKS_MIN_REFETCH_SECONDS = 60.0

# Which key types fit which algorithm (SMART step 3: "kty consistent with the signature
# algorithm"); ES384 is ECDSA on P-384 only (RFC 7518 §3.4).
_KTY_FOR_ALG = {"RS384": ("RSA", None), "ES384": ("EC", "P-384")}
# Unknown header parameters are ignored unless listed in `crit` (RFC 7515 §4), hence the
# non-strict header check; `crit` itself is still enforced by joserfc.
_REGISTRY = JWSRegistry(algorithms=list(ACCEPTED_ALGS), strict_check_header=False)
_FETCH_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response: `error`, `error_description`, HTTP status.

    The description tells the client developer what to fix; it never carries stack traces,
    library messages or anything about our internals.
    """

    def __init__(self, error: str, description: str, status_code: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status_code = status_code if status_code is not None else (
            401 if error == "invalid_client" else 400)


def _invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


def _invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description, 400)


# -- JWK Sets at a jwks_uri ------------------------------------------------------------------


class JwksFetchError(Exception):
    """The JWK Set at a jwks_uri could not be used; the message is safe to show the client."""


class JwksFetcher(Protocol):
    def get(self, uri: str, *, kid: str) -> Mapping[str, Mapping[str, Any]]:
        """The usable public keys of the JWK Set at `uri`, by `kid`. `kid` is the one the caller
        is looking for: a fetcher may refetch a cached set that lacks it."""
        ...


@dataclass
class _Entry:
    keys: dict[str, dict[str, Any]] | None = None
    fetched_at: float = float("-inf")  # when `keys` was fetched
    expires_at: float = float("-inf")
    attempted_at: float = float("-inf")  # last fetch attempt, successful or not
    error: str | None = None  # the last attempt's failure, while `keys` is None or stale


def check_fetch_uri(uri: str) -> None:
    """https, or http on a loopback host (development); raises JwksFetchError."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise JwksFetchError("the registered jwks_uri is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme == "https" or (scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS):
        return
    raise JwksFetchError("the registered jwks_uri must use https (http only on a loopback host)")


def usable_keys(document: Any) -> dict[str, dict[str, Any]]:
    """The public RSA and EC keys with a `kid` of a JWK Set document, by `kid`.

    Entries of other types, without `kid`, or holding private key material are skipped (a set may
    carry keys for other purposes); a `kid` used twice is dropped entirely, since SMART requires
    exactly one candidate key.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError('the JWK Set is not a JSON object {"keys": [...]}')
    keys: dict[str, dict[str, Any]] = {}
    dropped: set[str] = set()
    for key in document["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
            continue
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid or "d" in key:
            continue
        if kid in keys:
            dropped.add(kid)
        keys[kid] = key
    for kid in dropped:
        del keys[kid]
    return keys


class HttpJwksFetcher:
    """`JwksFetcher` over httpx with the limits of the module docstring. Thread-safe; one
    instance per process (it is the cache)."""

    def __init__(self, *, timeout: float = JWKS_TIMEOUT_SECONDS, max_bytes: int = JWKS_MAX_BYTES,
                 max_age: float = JWKS_MAX_AGE_SECONDS,
                 min_refetch: float = JWKS_MIN_REFETCH_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.min_refetch = min_refetch
        self._clock = clock
        # No proxies from the environment, no redirects: the registered URL is the one fetched.
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                                  transport=transport)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._uri_locks: dict[str, threading.Lock] = {}
        self.fetches = 0  # HTTP requests made; for operators and tests

    def close(self) -> None:
        self._http.close()

    def get(self, uri: str, *, kid: str) -> Mapping[str, Mapping[str, Any]]:
        check_fetch_uri(uri)
        with self._lock:
            uri_lock = self._uri_locks.setdefault(uri, threading.Lock())
        # One fetch per URI at a time; callers waiting on it then find the fresh entry.
        with uri_lock:
            entry = self._entries.setdefault(uri, _Entry())
            now = self._clock()
            cached = entry.keys if now < entry.expires_at else None
            if cached is not None and (kid in cached
                                       or now - entry.attempted_at < self.min_refetch):
                return cached
            if cached is None and now - entry.attempted_at < self.min_refetch:
                # A failed or expired fetch less than a minute ago: don't hammer the client.
                raise JwksFetchError(entry.error or "the JWK Set could not be fetched")
            entry.attempted_at = now
            try:
                keys, max_age = self._fetch(uri)
            except JwksFetchError as exc:
                entry.error = str(exc)
                if cached is not None:
                    return cached  # the kid is unknown; the caller says so
                entry.keys = None
                raise
            entry.keys, entry.error = keys, None
            entry.fetched_at = now
            entry.expires_at = now + max_age
            return keys

    def _fetch(self, uri: str) -> tuple[dict[str, dict[str, Any]], float]:
        self.fetches += 1
        deadline = time.monotonic() + self.timeout
        body = bytearray()
        try:
            with self._http.stream("GET", uri, headers=_FETCH_HEADERS) as resp:
                if resp.status_code != 200:
                    raise JwksFetchError(f"fetching the JWK Set returned HTTP {resp.status_code}"
                                         + (" (redirects are not followed)"
                                            if resp.is_redirect else ""))
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise JwksFetchError(f"the JWK Set is larger than {self.max_bytes} bytes")
                for chunk in resp.iter_raw():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise JwksFetchError(f"the JWK Set is larger than {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("overall deadline")
                cache_control = resp.headers.get("cache-control", "")
        except httpx.TimeoutException:
            raise JwksFetchError(f"the JWK Set was not served within {self.timeout:g} s") from None
        except httpx.HTTPError:
            raise JwksFetchError("the JWK Set could not be fetched (connection failed)") from None
        if resp.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
            raise JwksFetchError("the JWK Set must be served without Content-Encoding")
        try:
            document = json.loads(bytes(body))
        except (ValueError, UnicodeError):
            raise JwksFetchError("the JWK Set is not JSON") from None
        keys = usable_keys(document)
        match = _MAX_AGE.search(cache_control)
        max_age = self.max_age
        if "no-store" in cache_control.lower() or "no-cache" in cache_control.lower():
            max_age = self.min_refetch
        elif match:
            max_age = float(match.group(1))
        return keys, min(max(max_age, self.min_refetch), self.max_age)


# -- the assertion ----------------------------------------------------------------------------


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise _invalid_client(f"the client_assertion has no '{name}' claim")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise _invalid_client(f"the client_assertion's '{name}' claim must be a NumericDate "
                              "(seconds since 1970-01-01T00:00:00Z)")
    return float(value)


def _media_type(value: str) -> str:
    value = value.lower()
    return value[len("application/"):] if value.startswith("application/") else value


def _header(token: str) -> tuple[jws.CompactSignature, dict[str, Any], dict[str, Any]]:
    """Parse without verifying: the header and the claims (to find the client)."""
    if len(token) > MAX_ASSERTION_BYTES:
        raise _invalid_client(f"the client_assertion is longer than {MAX_ASSERTION_BYTES} bytes")
    try:
        obj = jws.extract_compact(token.encode("ascii"))
        header = obj.headers()
        claims = json.loads(obj.payload or b"")
    except (jose_errors.JoseError, ValueError, TypeError, UnicodeError):
        raise _invalid_client("the client_assertion is not a compact JWS (three base64url parts "
                              "with a JSON header and a JSON claims set)") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _invalid_client("the client_assertion's header and claims must be JSON objects")
    return obj, header, claims


def _select_key(keys: Mapping[str, Mapping[str, Any]], kid: str, alg: str,
                source: str) -> RSAKey | ECKey:
    jwk = keys.get(kid)
    if jwk is None:
        raise _invalid_client(f"no key with kid {kid!r} in the client's {source}")
    kty, crv = _KTY_FOR_ALG[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise _invalid_client(f"key {kid!r} is kty {jwk.get('kty')!r}"
                              + (f" crv {jwk.get('crv')!r}" if jwk.get("crv") else "")
                              + f"; alg {alg} needs kty {kty!r}"
                              + (f" crv {crv!r}" if crv else ""))
    try:
        return (RSAKey if kty == "RSA" else ECKey).import_key(dict(jwk))
    except (jose_errors.JoseError, ValueError, TypeError):
        raise _invalid_client(f"key {kid!r} in the client's {source} is not a valid "
                              f"{kty} public key") from None


def check_client_assertion(form: Mapping[str, str], *, token_url: str, store: AuthStore,
                           jwks_fetcher: JwksFetcher,
                           clock: Callable[[], float] = time.time) -> Client:
    """Authenticate the client of a token request by its `client_assertion` (see module doc).

    `form` is the token request's form; `token_url` the absolute URL of this token endpoint
    (the assertion's required `aud`); `clock` gives Unix seconds. Returns the client; raises
    `OAuthError` (`invalid_request` 400 for a malformed request, `invalid_client` 401 for an
    assertion that does not authenticate a registered asymmetric client).
    """
    assertion_type = form.get("client_assertion_type")
    if not assertion_type:
        raise _invalid_request("client_assertion_type is required; SMART Backend Services use "
                               f"{JWT_BEARER_ASSERTION_TYPE}")
    if assertion_type != JWT_BEARER_ASSERTION_TYPE:
        raise _invalid_request(f"client_assertion_type must be {JWT_BEARER_ASSERTION_TYPE}")
    token = form.get("client_assertion")
    if not token:
        raise _invalid_request("client_assertion is required (a JWT signed with the client's "
                               "registered key)")

    obj, header, unverified = _header(token)
    alg = header.get("alg")
    if alg not in ACCEPTED_ALGS:
        raise _invalid_client(f"client_assertion alg {alg!r} is not accepted; sign with "
                              f"{' or '.join(ACCEPTED_ALGS)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _invalid_client("the client_assertion header has no kid; name the signing key's "
                              "kid from the registered JWK Set")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or _media_type(typ) != "jwt"):
        raise _invalid_client(f"the client_assertion header typ is {typ!r}; expected 'JWT'")

    iss, sub = unverified.get("iss"), unverified.get("sub")
    if not isinstance(iss, str) or not iss:
        raise _invalid_client("the client_assertion has no 'iss' claim (the client_id)")
    if sub != iss:
        raise _invalid_client("the client_assertion's 'sub' must equal its 'iss' (both the "
                              "client_id)")
    client_id_param = form.get("client_id")
    if client_id_param is not None and client_id_param != iss:
        raise _invalid_client("the client_id parameter differs from the client_assertion's iss")
    client = store.get_client(iss)
    if client is None:
        raise _invalid_client(f"client {iss!r} is not registered")
    if client.kind != "asymmetric":
        raise _invalid_client(f"client {iss!r} is not registered for private_key_jwt "
                              "authentication (no JWK Set or jwks_uri)")

    jku = header.get("jku")
    if jku is not None and (client.jwks_uri is None or jku != client.jwks_uri):
        raise _invalid_client("the client_assertion's jku header does not match the jwks_uri "
                              "registered for this client" if client.jwks_uri else
                              "the client_assertion has a jku header but this client registered "
                              "a JWK Set, not a jwks_uri; omit jku")
    if client.jwks_uri is not None:
        try:
            keys = jwks_fetcher.get(client.jwks_uri, kid=kid)
        except JwksFetchError as exc:
            raise _invalid_client(f"the JWK Set at the registered jwks_uri could not be used: "
                                  f"{exc}") from None
        source = "JWK Set at the registered jwks_uri"
    else:
        try:
            keys = usable_keys(dict(client.jwks or {}))
        except JwksFetchError:
            keys = {}
        source = "registered JWK Set"
    key = _select_key(keys, kid, alg, source)
    try:
        valid = jws.validate_compact(obj, key, algorithms=[alg], registry=_REGISTRY)
    except jose_errors.JoseError:
        raise _invalid_client("the client_assertion header is not acceptable (unsupported "
                              "crit or header parameters)") from None
    if not valid:
        raise _invalid_client(f"the client_assertion signature does not verify with key {kid!r}")
    claims = unverified

    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if token_url not in auds:
        raise _invalid_client(f"the client_assertion's aud must be the token endpoint URL "
                              f"{token_url}")
    now = clock()
    exp = _numeric_date(claims, "exp", required=True)
    assert exp is not None
    if exp <= now - LEEWAY_SECONDS:
        raise _invalid_client("the client_assertion has expired (exp is in the past)")
    if exp - now > MAX_ASSERTION_LIFETIME_SECONDS + LEEWAY_SECONDS:
        raise _invalid_client(f"the client_assertion's exp is more than "
                              f"{MAX_ASSERTION_LIFETIME_SECONDS} s in the future")
    iat = _numeric_date(claims, "iat", required=False)
    if iat is not None and iat > now + LEEWAY_SECONDS:
        raise _invalid_client("the client_assertion's iat is in the future")
    nbf = _numeric_date(claims, "nbf", required=False)
    if nbf is not None and nbf > now + LEEWAY_SECONDS:
        raise _invalid_client("the client_assertion is not valid yet (nbf is in the future)")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise _invalid_client("the client_assertion has no 'jti' claim (a unique id for each "
                              "assertion)")
    if len(jti) > MAX_JTI_CHARS:
        raise _invalid_client(f"the client_assertion's jti is longer than {MAX_JTI_CHARS} "
                              "characters")
    # Remember it for as long as this assertion could still be accepted.
    if not store.remember_jti(client.client_id, jti, max(exp, now) + LEEWAY_SECONDS):
        raise _invalid_client("this client_assertion (jti) was already used; sign a new one "
                              "with a fresh jti for each token request")
    return client
