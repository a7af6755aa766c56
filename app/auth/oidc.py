"""OpenID Connect Core 1.0 §3.1 id_tokens for the authorization code flow, with SMART App
Launch 2.2's `fhirUser` claim, on Authlib's `OpenIDCode` extension.

Authlib decides when an id_token is due (an `openid` scope in the token response, hook
`after_create_token_response`) and validates `nonce`/`prompt` at the authorization endpoint;
the token itself is signed here with our keyring (RS256, `kid` from the JWKS at `/auth/jwks`)
rather than through Authlib's key resolution, so id_tokens and access tokens share one key
store and rotation. Claims: `iss` = the issuer (`…/auth`), `sub` = the user's FHIR reference
(`Patient/…` or `Practitioner/…`), `aud` = the client id, `iat`, `exp`, `auth_time`, `nonce`
when the request had one, `at_hash`, and `fhirUser` (absolute URL) when `fhirUser` was granted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.grants.util import create_half_hash

from app.auth.keys import Keyring
from app.auth.scopes import parse_scopes

ID_TOKEN_ALG = "RS256"  # OIDC Core §15.1: RS256 is the algorithm every relying party supports


class SmartOpenIDCode(OpenIDCode):
    def __init__(self, *, keyring: Keyring, issuer: str, fhir_base: str, lifetime: int,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(require_nonce=False)
        self.keyring = keyring
        self.issuer = issuer
        self.fhir_base = fhir_base
        self.lifetime = lifetime
        self.clock = clock

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        # A nonce binds an id_token to the client's session (OIDC Core §3.1.2.1); replay of
        # the id_token is the client's check. The approval step re-validates the same request,
        # so refusing a nonce seen before would refuse every approval.
        return False

    def generate_user_info(self, user: Any, scope: str) -> dict[str, Any]:
        claims: dict[str, Any] = {"sub": user.fhir_user}
        if "fhirUser" in parse_scopes(scope).scopes.other:
            claims["fhirUser"] = f"{self.fhir_base}/{user.fhir_user}"
        return claims

    def encode_id_token(self, token: dict[str, Any], request: OAuth2Request) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": request.client.get_client_id(),
                                  "iat": now, "exp": now + self.lifetime}
        code = request.authorization_code
        if code is not None:
            claims.update(self.get_authorization_code_claims(code))
        access_token = token.get("access_token")
        if access_token:
            at_hash = create_half_hash(access_token, ID_TOKEN_ALG)
            if at_hash is not None:
                claims["at_hash"] = at_hash.decode("ascii")
        claims.update(self.generate_user_info(request.user, token["scope"]))
        return self.keyring.sign(claims, typ="JWT", alg=ID_TOKEN_ALG)
