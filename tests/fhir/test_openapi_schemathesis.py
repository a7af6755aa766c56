"""Schema-driven fuzzing with schemathesis: every operation in the server's own OpenAPI document
(`/openapi.json`), called over HTTP on a real `yilian serve`, answers without a server error, and
every error it answers is an OperationOutcome (R4 http.html §3.1.0.6).

The document the server publishes types `{type_}` and `{id_}` as free strings and bodies as any
object, so generated requests mostly stop at the 404 for an unknown type. A second run therefore
fuzzes an annotated copy: path parameters constrained to real resource types and FHIR ids, and the
R4 search/history result parameters (`_count`, `_offset`, `_since`, `_sort`, ...) declared with
their types, so generated requests get past routing into search, history and the store.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from app.auth.bearer import issue_access_token
from app.auth.keys import Keyring
from app.auth.routes_token import AuthUrls
from app.auth.scopes import parse_scopes
from app.samples import HospitalGenerator
from tests.live_server import FHIR_JSON, LiveServer

MAX_EXAMPLES = 25
TYPES = ["Patient", "Observation", "Encounter", "DiagnosticReport", "Condition",
         "Organization", "Practitioner"]
PATIENT_ID = "pat-000001"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(Path(tmp_path_factory.mktemp("schemathesis")) / "var")
    with live:
        gen = HospitalGenerator(seed=5)
        patient = next(gen.patients(1))
        assert patient["id"] == PATIENT_ID
        encounter = next(gen.encounters(patient, 1))
        with live.client() as http:
            for res in (patient, encounter, *gen.lab_panel(patient, encounter, "肾功能")):
                r = http.put(f"/{res['resourceType']}/{res['id']}", json=res, headers=FHIR_JSON)
                assert r.status_code == 201, r.text
        yield live


def error_is_operation_outcome(ctx: Any, response: schemathesis.Response,
                               case: schemathesis.Case) -> bool | None:
    """A custom check: every 4xx/5xx body is an OperationOutcome with diagnostics."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: "
                             f"{response.text[:300]!r}") from None
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        raise AssertionError(f"{response.status_code} answer is not an OperationOutcome: "
                             f"{response.text[:300]}")
    issues = body.get("issue") or []
    if not any(isinstance(i, dict) and i.get("diagnostics") for i in issues):
        raise AssertionError(f"OperationOutcome without diagnostics: {response.text[:300]}")
    return True


def fuzz(schema: Any, base_url: str,
         variants: Callable[[Any], list[dict[str, Any] | None]],
         headers: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run every operation (each path-parameter variant, positive and — for operations with a
    body — negative cases); return the number of operations and every failure found."""
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        # Negative cases break the schema; only a request body gives them something to break.
        modes = [GenerationMode.POSITIVE]
        if operation.body:
            modes.append(GenerationMode.NEGATIVE)
        for pinned in variants(operation):
            for mode in modes:
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=pinned)

                @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def run(case: schemathesis.Case) -> None:
                    response = case.call(base_url=base_url, headers=headers)
                    case.validate_response(response, checks=[not_a_server_error,
                                                              error_is_operation_outcome])

                try:
                    run()
                except Unsatisfiable:
                    continue  # nothing in this variant can be generated (e.g. no parameters)
                except (Exception, BaseExceptionGroup) as exc:  # collect all, report at the end
                    failures.append(f"{operation.label} ({mode.value}, path parameters "
                                    f"{pinned}):\n{str(exc)[:1500]}")
    return operations, failures


def report(failures: list[str], server: LiveServer) -> str:
    # The innermost frames of each distinct server traceback are what a fix needs.
    ends = dict.fromkeys("\n".join(tb.splitlines()[-5:]) for tb in server.tracebacks())
    return (f"{len(failures)} failing operation variants:\n\n" + "\n\n".join(failures)
            + "\n\nserver tracebacks (innermost frames):\n" + "\n--\n".join(ends))


def test_every_operation_of_the_published_openapi_answers_without_a_server_error(
        server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(server.root_url + "/openapi.json")
    operations, failures = fuzz(schema, server.root_url, lambda op: [None])
    assert operations >= 15, f"the OpenAPI document lists only {operations} operations"
    assert not failures, report(failures, server)


# -- the annotated copy ---------------------------------------------------------------------------

def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


SEARCH_PARAMETERS = [
    _query("_count", {"type": "integer"}),
    _query("_offset", {"type": "integer"}),
    _query("_sort", {"type": "string"}),
    _query("_summary", {"enum": ["true", "false", "count", "text", "data"]}),
    _query("_total", {"enum": ["none", "estimate", "accurate"]}),
    _query("_elements", {"type": "string"}),
    _query("_include", {"type": "string"}),
    _query("_id", {"type": "string"}),
    _query("_lastUpdated", {"type": "string", "format": "date-time"}),
]
HISTORY_PARAMETERS = [
    _query("_count", {"type": "integer"}),
    _query("_offset", {"type": "integer"}),
    _query("_since", {"type": "string", "format": "date-time"}),
    _query("_at", {"type": "string", "format": "date"}),
]
PATH_SCHEMAS = {
    "type_": {"type": "string", "enum": TYPES},
    "id_": {"type": "string", "pattern": r"^[A-Za-z0-9\-.]{1,64}$"},
    "vid": {"type": "string", "pattern": r"^[0-9]{1,20}$"},
    "op": {"type": "string", "enum": ["$validate", "$everything", "$meta", "_history"]},
    "name": {"type": "string", "enum": ["_search", "$validate", "$everything"]},
}
RESOURCE_BODY = {"type": "object", "required": ["resourceType"], "properties": {
    "resourceType": {"enum": TYPES},
    "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-.]{1,64}$"},
    "status": {"type": "string"},
    "gender": {"enum": ["male", "female", "other", "unknown"]},
    "birthDate": {"type": "string", "format": "date"},
    "name": {"type": "array", "items": {"type": "object", "properties": {
        "family": {"type": "string"}, "given": {"type": "array", "items": {"type": "string"}}}}},
    "identifier": {"type": "array", "items": {"type": "object", "properties": {
        "system": {"type": "string"}, "value": {"type": "string"}}}},
    "subject": {"type": "object", "properties": {"reference": {"type": "string"}}},
}}


def annotated(document: dict[str, Any]) -> dict[str, Any]:
    """The published document with path parameters, bodies and result parameters typed."""
    doc = copy.deepcopy(document)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] in PATH_SCHEMAS:
                    param["schema"] = PATH_SCHEMAS[param["name"]]
            content = op.get("requestBody", {}).get("content", {})
            if "application/fhir+json" in content and not path.endswith("/fhir"):
                content["application/fhir+json"]["schema"] = RESOURCE_BODY
            if method == "get" and path in ("/fhir/{type_}",):
                op.setdefault("parameters", []).extend(SEARCH_PARAMETERS)
            if method == "get" and path.endswith("/_history"):
                op.setdefault("parameters", []).extend(HISTORY_PARAMETERS)
    return doc


def test_every_operation_with_typed_parameters_answers_without_a_server_error(
        server: LiveServer) -> None:
    document = httpx.get(server.root_url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(annotated(document))
    operations, failures = fuzz(
        schema, server.root_url,
        lambda op: [None, {"type_": "Patient", "id_": PATIENT_ID}] if "{id_}" in op.path
        else [None])
    assert operations >= 15
    assert not failures, report(failures, server)


# -- the same, with authorization on and a patient's token ---------------------------------------

def _token(live: LiveServer, scope: str, **context: str) -> dict[str, str]:
    token = issue_access_token(
        Keyring(live.var_dir / "keys"), issuer=AuthUrls.from_base_url(live.base_url).issuer,
        audience=live.base_url, client_id="fuzz", subject="fuzz",
        scope=parse_scopes(scope).scopes, **context)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def smart_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(Path(tmp_path_factory.mktemp("schemathesis-smart")) / "var",
                      env={"YILIAN_AUTH": "smart"})
    with live:
        gen = HospitalGenerator(seed=5)
        admin = _token(live, "system/*.cruds")
        with live.client() as http:
            for patient in gen.patients(2):
                encounter = next(gen.encounters(patient, 1))
                for res in (patient, encounter, *gen.lab_panel(patient, encounter, "肾功能")):
                    r = http.put(f"/{res['resourceType']}/{res['id']}", json=res,
                                 headers={**FHIR_JSON, **admin})
                    assert r.status_code == 201, r.text
        yield live


def test_a_patient_token_meets_no_server_error_through_any_operation(
        smart_server: LiveServer) -> None:
    # Every access rule (compartment clauses in searches, chains, includes, history, writes
    # judged against the grant) under the same fuzzing, with 张三's patient app token.
    document = httpx.get(smart_server.root_url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(annotated(document))
    headers = _token(smart_server, "launch/patient patient/*.cruds", patient=PATIENT_ID,
                     fhir_user=f"Patient/{PATIENT_ID}")
    with smart_server.client() as http:  # the token is good: fuzzing gets past the 401
        assert http.get(f"/Patient/{PATIENT_ID}", headers=headers).status_code == 200
        assert http.get("/Observation?_summary=count", headers=headers).json()["total"] > 0
    operations, failures = fuzz(
        schema, smart_server.root_url,
        lambda op: [None, {"type_": "Patient", "id_": PATIENT_ID}] if "{id_}" in op.path
        else [None], headers=headers)
    assert operations >= 15
    assert not failures, report(failures, smart_server)
