"""SMART discovery through the real app: `/fhir/.well-known/smart-configuration`, the OpenID
Connect configuration (at the issuer and at the FHIR base), the CapabilityStatement's
`oauth-uris`, and CORS for browser apps on another origin."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from app.auth.discovery import SmartEndpoints, smart_configuration
from app.server import create_app
from tests.conftest import make_settings

# A hospital behind a proxy that mounts Yilian under /yy: the issuer keeps the prefix.
BASE = "https://fhir.bjrmyy.example.cn/yy/fhir"
ISSUER = "https://fhir.bjrmyy.example.cn/yy/auth"
APP_ORIGIN = "http://127.0.0.1:5173"  # a SMART app served from another origin

CAPABILITIES_OF_ISSUE_4 = {
    "launch-ehr", "launch-standalone", "authorize-post", "client-public",
    "client-confidential-symmetric", "client-confidential-asymmetric", "sso-openid-connect",
    "context-banner", "context-style", "context-ehr-patient", "context-ehr-encounter",
    "context-standalone-patient", "context-standalone-encounter", "permission-offline",
    "permission-online", "permission-patient", "permission-user", "permission-v1",
    "permission-v2",
}
URL_FIELDS = ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint",
              "registration_endpoint", "management_endpoint", "introspection_endpoint",
              "revocation_endpoint")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("discovery"), auth="smart")
    settings = settings.model_copy(update={"base_url": BASE})
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def config(client: TestClient) -> dict[str, object]:
    response = client.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_smart_configuration_has_every_required_and_recommended_field(
        config: dict[str, object]) -> None:
    assert config["issuer"] == ISSUER
    assert config["jwks_uri"] == ISSUER + "/jwks"
    assert config["authorization_endpoint"] == ISSUER + "/authorize"
    assert config["token_endpoint"] == ISSUER + "/token"
    assert config["revocation_endpoint"] == ISSUER + "/revoke"
    assert config["introspection_endpoint"] == ISSUER + "/introspect"
    assert config["registration_endpoint"] == ISSUER + "/register"
    assert config["management_endpoint"] == ISSUER + "/manage"
    assert config["grant_types_supported"] == ["authorization_code", "refresh_token",
                                               "client_credentials"]
    assert config["token_endpoint_auth_methods_supported"] == [
        "none", "client_secret_basic", "client_secret_post", "private_key_jwt"]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert config["response_types_supported"] == ["code"]
    scopes = config["scopes_supported"]
    assert isinstance(scopes, list)
    for scope in ("openid", "fhirUser", "launch", "launch/patient", "launch/encounter",
                  "offline_access", "online_access", "patient/*.rs", "user/*.rs",
                  "system/*.rs"):
        assert scope in scopes


def test_pkce_is_advertised_as_s256_only(config: dict[str, object]) -> None:
    assert config["code_challenge_methods_supported"] == ["S256"]


def test_capabilities_are_exactly_the_nineteen_of_the_issue(config: dict[str, object]) -> None:
    capabilities = config["capabilities"]
    assert isinstance(capabilities, list)
    assert len(capabilities) == len(set(capabilities)) == 19
    assert set(capabilities) == CAPABILITIES_OF_ISSUE_4


def test_every_discovered_url_is_absolute_and_on_the_public_host(
        config: dict[str, object]) -> None:
    for field in URL_FIELDS:
        url = config[field]
        assert isinstance(url, str)
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("https", "fhir.bjrmyy.example.cn"), field
        assert parts.path.startswith("/yy/auth"), field


@pytest.mark.parametrize("accept", [None, "application/fhir+json", "application/json",
                                    "text/html,application/xhtml+xml", "application/xml",
                                    "*/*", "text/plain"])
def test_smart_configuration_is_json_whatever_accept_says(client: TestClient,
                                                           accept: str | None) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    response = client.get("/fhir/.well-known/smart-configuration", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"
    assert response.json()["token_endpoint"] == ISSUER + "/token"


def test_discovery_and_metadata_need_no_token_with_authorization_on(client: TestClient) -> None:
    for path in ("/fhir/.well-known/smart-configuration", "/fhir/.well-known/openid-configuration",
                 "/auth/.well-known/openid-configuration", "/auth/jwks", "/fhir/metadata"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])


def test_capability_statement_oauth_uris_match_the_smart_configuration(
        client: TestClient, config: dict[str, object]) -> None:
    cs = client.get("/fhir/metadata").json()
    security = cs["rest"][0]["security"]
    codings = [c for s in security["service"] for c in s["coding"]]
    assert {"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"} in codings
    [oauth] = [e for e in security["extension"] if e["url"] ==
               "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"]
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    assert uris == {
        "authorize": config["authorization_endpoint"], "token": config["token_endpoint"],
        "register": config["registration_endpoint"], "manage": config["management_endpoint"],
        "introspect": config["introspection_endpoint"], "revoke": config["revocation_endpoint"],
    }


@pytest.mark.parametrize("path", ["/auth/.well-known/openid-configuration",
                                  "/fhir/.well-known/openid-configuration"])
def test_openid_configuration_names_the_issuer_of_our_id_tokens(client: TestClient,
                                                                path: str) -> None:
    response = client.get(path, headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"
    oidc = response.json()
    assert oidc["issuer"] == ISSUER
    assert oidc["authorization_endpoint"] == ISSUER + "/authorize"
    assert oidc["token_endpoint"] == ISSUER + "/token"
    assert oidc["jwks_uri"] == ISSUER + "/jwks"
    assert oidc["response_types_supported"] == ["code"]
    assert oidc["subject_types_supported"] == ["public"]
    assert oidc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"openid", "fhirUser", "profile"} <= set(oidc["scopes_supported"])
    assert {"iss", "sub", "aud", "exp", "iat", "fhirUser"} <= set(oidc["claims_supported"])


def test_jwks_uri_serves_the_keys_that_sign_tokens(client: TestClient,
                                                   config: dict[str, object]) -> None:
    jwks_path = urlsplit(str(config["jwks_uri"])).path.removeprefix("/yy")
    keys = client.get(jwks_path).json()["keys"]
    assert keys and all("kid" in k and "d" not in k for k in keys)


def test_endpoints_derive_from_the_base_url_like_the_token_service() -> None:
    endpoints = SmartEndpoints.from_base_url("http://127.0.0.1:8080/fhir/")
    assert endpoints.issuer == "http://127.0.0.1:8080/auth"
    assert endpoints.fhir_base == "http://127.0.0.1:8080/fhir"
    assert endpoints.ehr_launch == "http://127.0.0.1:8080/auth/ehr"
    assert smart_configuration(endpoints)["token_endpoint"] == "http://127.0.0.1:8080/auth/token"


# -- CORS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/fhir/.well-known/smart-configuration", "/fhir/metadata",
                                  "/auth/jwks", "/auth/.well-known/openid-configuration"])
def test_browser_apps_on_another_origin_may_read_discovery(client: TestClient,
                                                           path: str) -> None:
    response = client.get(path, headers={"Origin": APP_ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("path", ["/auth/token", "/auth/revoke", "/auth/register",
                                  "/fhir/Patient", "/fhir/Observation/obs-000001-0001"])
def test_preflight_allows_authorization_and_content_type(client: TestClient, path: str) -> None:
    response = client.options(path, headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip().lower() for h in
               response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]


def test_fhir_errors_expose_www_authenticate_and_location_to_scripts(
        client: TestClient) -> None:
    response = client.get("/fhir/Patient", headers={"Origin": APP_ORIGIN})
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in
               response.headers["access-control-expose-headers"].split(",")}
    assert {"location", "etag", "last-modified", "content-location",
            "www-authenticate"} <= exposed


def test_token_endpoint_errors_carry_cors_headers(client: TestClient) -> None:
    response = client.post("/auth/token", data={"grant_type": "password"},
                           headers={"Origin": APP_ORIGIN})
    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("path", ["/auth/login", "/auth/authorize", "/auth/ehr",
                                  "/auth/introspect"])
def test_pages_and_introspection_are_not_opened_to_other_origins(client: TestClient,
                                                                 path: str) -> None:
    response = client.options(path, headers={"Origin": APP_ORIGIN,
                                             "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(("field", "method"), [
    ("authorization_endpoint", "GET"), ("token_endpoint", "POST"),
    ("registration_endpoint", "POST"), ("management_endpoint", "GET"),
    ("introspection_endpoint", "POST"), ("revocation_endpoint", "POST"), ("jwks_uri", "GET"),
])
def test_every_advertised_endpoint_is_served(client: TestClient, config: dict[str, object],
                                             field: str, method: str) -> None:
    # The proxy strips its /yy prefix before the request reaches Yilian.
    path = urlsplit(str(config[field])).path.removeprefix("/yy")
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code not in (404, 405), (field, response.status_code)
    assert response.status_code < 500, (field, response.text[:300])
