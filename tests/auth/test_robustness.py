"""No input to the OAuth endpoints, the pages or the bearer check gives a 500: hypothesis sends
random parameters (known names with random values, and random names) to each of them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.auth.authorize_flow import World, world

NAMES = ["client_id", "redirect_uri", "response_type", "scope", "state", "aud", "launch",
         "code_challenge", "code_challenge_method", "code", "code_verifier", "grant_type",
         "refresh_token", "client_secret", "client_assertion", "client_assertion_type", "token",
         "token_type_hint", "username", "password", "csrf", "req", "decision", "patient",
         "encounter", "q", "next", "lang", "grant_id"]
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "code", "S256", "plain", "authorization_code", "refresh_token",
                     "client_credentials", "approve", "deny", "patient/*.rs", "http://testserver/fhir",
                     "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "%00", "\x00", "../..", "Patient/x"]))
PARAMS = st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.text(max_size=10)), VALUES),
                  max_size=8)
HEADERS = st.one_of(st.text(max_size=60).map(lambda t: "".join(c for c in t if " " <= c < "\x7f")),
                    st.sampled_from(["Bearer", "Bearer ", "Bearer a.b.c", "Basic !!!",
                                     "Basic Og==", "bearer eyJ0eXAiOiJhdCtqd3QifQ.e30.x"]))
SETTINGS = settings(max_examples=int(os.environ.get("YILIAN_FUZZ_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(Path(tmp_path_factory.mktemp("robust"))) as built:
        yield built


def _client(w: World) -> TestClient:
    w.client.cookies.clear()
    return w.client


@SETTINGS
@given(path=st.sampled_from(["/auth/authorize", "/auth/approve", "/auth/login", "/auth/ehr",
                             "/auth/manage", "/auth/logout",
                             "/fhir/.well-known/smart-configuration"]),
       params=PARAMS)
def test_random_query_parameters_never_give_a_500(w: World, path: str,
                                                  params: list[tuple[str, str]]) -> None:
    r = _client(w).get(path, params=params, follow_redirects=False)
    assert r.status_code < 500, (path, params, r.text[:300])


@SETTINGS
@given(path=st.sampled_from(["/auth/authorize", "/auth/approve", "/auth/login", "/auth/ehr",
                             "/auth/manage", "/auth/logout", "/auth/token", "/auth/revoke",
                             "/auth/introspect", "/auth/register"]),
       params=PARAMS, auth=st.none() | HEADERS)
def test_random_forms_never_give_a_500(w: World, path: str, params: list[tuple[str, str]],
                                       auth: str | None) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth is not None:
        headers["Authorization"] = auth
    r = _client(w).post(path, content=urlencode(params), headers=headers,
                        follow_redirects=False)
    assert r.status_code < 500, (path, params, auth, r.text[:300])


@SETTINGS
@given(auth=HEADERS, path=st.sampled_from(["/fhir/Patient/pat-000001", "/fhir/Patient",
                                            "/fhir/Observation?subject=Patient/pat-000001",
                                            "/fhir/Patient/pat-000001/$everything"]))
def test_random_authorization_headers_get_401_never_a_500(w: World, auth: str, path: str) -> None:
    r = _client(w).get(path, headers={"Authorization": auth})
    assert r.status_code in (400, 401), (auth, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/fhir+json")
