"""SMART App Launch 2.x discovery (§2.0.7 "Conformance": `[base]/.well-known/smart-configuration`),
OpenID Connect Discovery 1.0 (`/.well-known/openid-configuration`) and the CapabilityStatement's
`rest.security` (`oauth-uris` extension, read by SMART v1 clients).

All three documents are generated here from one `SmartEndpoints` value, itself derived from the
public FHIR base URL the way the token service derives its issuer (`AuthUrls`), so the URLs a
client discovers cannot drift from the URLs the server answers on. Every URL is absolute.

The documents are served as `application/json` whatever the request's `Accept` says (SMART
requires JSON; a browser or `fhirclient` may ask for `application/fhir+json` or `*/*`), with
a short public cache lifetime: they change only when the server is reconfigured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from app.auth.routes_token import AuthUrls

SMART_CONFIGURATION_PATH = "/fhir/.well-known/smart-configuration"
FHIR_OPENID_CONFIGURATION_PATH = "/fhir/.well-known/openid-configuration"
AUTH_OPENID_CONFIGURATION_PATH = "/auth/.well-known/openid-configuration"
DISCOVERY_MAX_AGE_SECONDS = 300

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/restful-security-service"

# Exactly what Yilian implements (issue 4); `smart-app-state` is not among them.
CAPABILITIES: tuple[str, ...] = (
    "launch-ehr", "launch-standalone", "authorize-post",
    "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner", "context-style",
    "context-ehr-patient", "context-ehr-encounter",
    "context-standalone-patient", "context-standalone-encounter",
    "permission-offline", "permission-online",
    "permission-patient", "permission-user",
    "permission-v1", "permission-v2",
)
GRANT_TYPES: tuple[str, ...] = ("authorization_code", "refresh_token", "client_credentials")
TOKEN_ENDPOINT_AUTH_METHODS: tuple[str, ...] = ("none", "client_secret_basic",
                                                "client_secret_post", "private_key_jwt")
# RFC 7523 client assertions (SMART Backend Services and asymmetric apps).
ASSERTION_SIGNING_ALGS: tuple[str, ...] = ("RS384", "ES384")
# id_tokens are always RS256 (OpenID Connect Core §15.1 makes RS256 mandatory to support).
ID_TOKEN_SIGNING_ALGS: tuple[str, ...] = ("RS256",)
# A representative list (RFC 8414 §2: "SHOULD", need not be exhaustive): the identity and
# context scopes, and wildcard clinical scopes in v2 and v1 syntax for each context.
SCOPES_SUPPORTED: tuple[str, ...] = (
    "openid", "fhirUser", "profile",
    "launch", "launch/patient", "launch/encounter",
    "offline_access", "online_access",
    "patient/*.cruds", "patient/*.rs", "patient/*.read", "patient/*.write",
    "user/*.cruds", "user/*.rs", "user/*.read", "user/*.write",
    "system/*.cruds", "system/*.rs", "system/*.read", "system/*.write",
)
OIDC_CLAIMS: tuple[str, ...] = ("iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
                                "fhirUser", "name")


@dataclass(frozen=True)
class SmartEndpoints:
    """Every absolute URL of the authorization server, for one FHIR base URL."""

    fhir_base: str
    issuer: str
    authorize: str
    token: str
    revoke: str
    introspect: str
    register: str
    manage: str
    jwks: str
    ehr_launch: str

    @classmethod
    def from_base_url(cls, base_url: str) -> SmartEndpoints:
        urls = AuthUrls.from_base_url(base_url)
        issuer = urls.issuer
        return cls(fhir_base=urls.fhir_base, issuer=issuer, authorize=issuer + "/authorize",
                   token=urls.token, revoke=urls.revoke, introspect=urls.introspect,
                   register=issuer + "/register", manage=issuer + "/manage",
                   jwks=issuer + "/jwks", ehr_launch=issuer + "/ehr")


def smart_configuration(endpoints: SmartEndpoints) -> dict[str, Any]:
    """The SMART App Launch 2.x configuration document (required and recommended fields)."""
    return {
        "issuer": endpoints.issuer,
        "jwks_uri": endpoints.jwks,
        "authorization_endpoint": endpoints.authorize,
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint": endpoints.token,
        "token_endpoint_auth_methods_supported": list(TOKEN_ENDPOINT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_SIGNING_ALGS),
        "registration_endpoint": endpoints.register,
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "management_endpoint": endpoints.manage,
        "introspection_endpoint": endpoints.introspect,
        "revocation_endpoint": endpoints.revoke,
        "code_challenge_methods_supported": ["S256"],
        "capabilities": list(CAPABILITIES),
    }


def openid_configuration(endpoints: SmartEndpoints) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 §3 metadata; `issuer` equals the id_token `iss`."""
    return {
        "issuer": endpoints.issuer,
        "authorization_endpoint": endpoints.authorize,
        "token_endpoint": endpoints.token,
        "jwks_uri": endpoints.jwks,
        "registration_endpoint": endpoints.register,
        "revocation_endpoint": endpoints.revoke,
        "introspection_endpoint": endpoints.introspect,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ID_TOKEN_SIGNING_ALGS),
        "token_endpoint_auth_methods_supported": list(TOKEN_ENDPOINT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_SIGNING_ALGS),
        "scopes_supported": ["openid", "fhirUser", "profile", "offline_access",
                             "online_access"],
        "claims_supported": list(OIDC_CLAIMS),
        "code_challenge_methods_supported": ["S256"],
        "ui_locales_supported": ["zh-CN", "en"],
    }


def capability_security(endpoints: SmartEndpoints) -> dict[str, Any]:
    """`CapabilityStatement.rest[0].security`: the SMART-on-FHIR service and the `oauth-uris`
    extension with the same URLs as the SMART configuration."""
    uris = (("authorize", endpoints.authorize), ("token", endpoints.token),
            ("register", endpoints.register), ("manage", endpoints.manage),
            ("introspect", endpoints.introspect), ("revoke", endpoints.revoke))
    return {
        "cors": True,
        "service": [{
            "coding": [{"system": SECURITY_SERVICE_SYSTEM, "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
        }],
        "extension": [{
            "url": OAUTH_URIS_EXTENSION,
            "extension": [{"url": name, "valueUri": uri} for name, uri in uris],
        }],
        "description": "SMART App Launch 2.x: authorization code with PKCE S256, OpenID "
                       "Connect, refresh tokens, SMART Backend Services (private_key_jwt); "
                       f"discovery at {endpoints.fhir_base}/.well-known/smart-configuration",
    }


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json",
                    headers={"Cache-Control": f"public, max-age={DISCOVERY_MAX_AGE_SECONDS}"})


def build_discovery_router(base_url: str) -> APIRouter:
    """The discovery routes; include before the FHIR router, whose `/fhir/{type}/{id}` would
    otherwise take `/fhir/.well-known/…`."""
    endpoints = SmartEndpoints.from_base_url(base_url)
    smart = smart_configuration(endpoints)
    oidc = openid_configuration(endpoints)
    router = APIRouter()

    @router.get(SMART_CONFIGURATION_PATH, include_in_schema=False)
    async def smart_config() -> Response:
        return _json(smart)

    @router.get(FHIR_OPENID_CONFIGURATION_PATH, include_in_schema=False)
    async def fhir_openid_config() -> Response:
        return _json(oidc)

    @router.get(AUTH_OPENID_CONFIGURATION_PATH, include_in_schema=False)
    async def auth_openid_config() -> Response:
        return _json(oidc)

    return router
