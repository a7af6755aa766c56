"""`GET /auth/jwks`: the server's token signing keys as an RFC 7517 JWK Set.

Published as `jwks_uri` in the SMART configuration and OpenID Connect discovery documents; holds
active and retiring public keys (`app/auth/keys.py`), so relying parties that cache it for the
five minutes it allows still verify tokens signed just before a rotation.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from app.auth.keys import Keyring

JWKS_PATH = "/auth/jwks"
JWKS_MAX_AGE_SECONDS = 300


def build_jwks_router(keyring: Keyring) -> APIRouter:
    router = APIRouter()

    @router.get(JWKS_PATH, include_in_schema=False)
    def jwks() -> Response:
        # A plain `def`: a reload reads files, so it runs in the threadpool, not on the loop.
        return Response(orjson.dumps(keyring.jwks()), media_type="application/json",
                        headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"})

    return router
