"""The access policy (app/auth/policy.py) and its two evaluations: rules compiled into SQL search
clauses and the same rules judged on one resource in memory must always agree."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.auth.authorizer import SmartAuthorizer
from app.auth.policy import AccessPolicy
from app.auth.scopes import parse_scopes
from app.fhir.outcome import FhirError
from app.pipeline.hooks import Principal
from app.search.query import parse_search
from app.server import create_app
from tests.auth.test_security_tokens import Smart
from tests.conftest import lab, make_settings, patient

CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
PATIENTS = ("p-1", "p-2", "p-3")
ATOMS = (
    "patient/Observation.rs",
    f"patient/Observation.rs?category={CAT}|laboratory",
    f"patient/Observation.rs?category={CAT}|vital-signs",
    "patient/Observation.rs?code=http://loinc.org|718-7",
    "patient/Observation.rs?status=final",
    f"patient/Observation.rs?category={CAT}|laboratory&status=amended",
    "system/Observation.rs?code=http://loinc.org|6690-2",
    "user/Observation.rs",
    "patient/Observation.rs?subject=Patient/p-2",
)


def principal(scope: str, patient_id: str | None = None,
              fhir_user: str | None = None) -> Principal:
    parsed = parse_scopes(scope)
    assert not parsed.invalid
    return Principal(subject="u", client_id="c", anonymous=False, scope_set=parsed.scopes,
                     scopes=tuple(parsed.scopes.tokens()), patient=patient_id,
                     fhir_user=fhir_user, token_id=f"jti-{scope}-{patient_id}-{fhir_user}")


def observation(rng: random.Random, i: int) -> dict[str, Any]:
    pid = rng.choice(PATIENTS)
    loinc = rng.choice(("6690-2", "718-7", "8867-4"))
    res = lab(pid, loinc=loinc, oid=f"o-{i}", value=rng.randint(1, 99))
    res["status"] = rng.choice(("final", "amended", "preliminary"))
    kind = rng.random()
    if kind < 0.3:
        res["category"][0]["coding"][0]["code"] = "vital-signs"
    elif kind < 0.4:
        del res["category"]
    if rng.random() < 0.2:  # in two compartments: performed by another patient
        res["performer"] = [{"reference": f"Patient/{rng.choice(PATIENTS)}"}]
    if rng.random() < 0.1:
        res["subject"] = {"reference": "Group/g-1"}
    return res


class Data:
    def __init__(self, smart: Smart) -> None:
        self.smart = smart
        admin = smart.headers("system/*.cruds")
        rng = random.Random(20261123)
        for pid in PATIENTS:
            assert smart.client.put(f"/fhir/Patient/{pid}", json=patient(pid),
                                    headers=admin).status_code in (200, 201)
        for i in range(60):
            res = observation(rng, i)
            assert smart.client.put(f"/fhir/Observation/o-{i}", json=res,
                                    headers=admin).status_code in (200, 201)
        self.authorizer = smart.app.state.service.hooks.authorizer
        assert isinstance(self.authorizer, SmartAuthorizer)
        store = smart.app.state.store
        self.versions = [asyncio.run(store.read("Observation", f"o-{i}")) for i in range(60)]

    def sql(self, p: Principal) -> set[str]:
        query, _ = parse_search(("Observation",), [("_count", "1000")],
                                self.smart.app.state.service.parse_ctx)
        try:
            query = self.authorizer.restrict(p, query, "s")
        except FhirError as exc:
            assert exc.status == 403
            return set()  # denied outright: nothing is visible either
        page = asyncio.run(self.smart.app.state.store.search(query))
        return {v.id for v in page.matches}

    def memory(self, p: Principal) -> set[str]:
        return {v.id for v in self.versions if v and self.authorizer.visible(p, v, "s")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    app = create_app(make_settings(tmp_path_factory.mktemp("policy"), auth="smart"))
    with TestClient(app) as client:
        yield Data(Smart(client))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(atoms=st.lists(st.sampled_from(ATOMS), min_size=1, max_size=3, unique=True),
       patient_id=st.sampled_from((*PATIENTS, None)),
       fhir_user=st.sampled_from(("Patient/p-1", "Practitioner/d-1", None)))
def test_matcher_agrees_with_sql(data: Data, atoms: list[str], patient_id: str | None,
                                 fhir_user: str | None) -> None:
    p = principal(" ".join(atoms), patient_id, fhir_user)
    assert data.sql(p) == data.memory(p)


def test_the_reference_sets_are_what_the_rules_say(data: Data) -> None:
    everything = {f"o-{i}" for i in range(60)}
    assert data.sql(principal("system/Observation.rs")) == everything
    mine = data.sql(principal("patient/Observation.rs", "p-1"))
    assert mine and mine < everything
    for v in data.versions:
        assert v is not None
        body = v.body.decode()
        if v.id in mine:
            assert "Patient/p-1" in body
    labs = data.sql(principal(f"patient/Observation.rs?category={CAT}|laboratory", "p-1"))
    assert labs < mine
    assert data.sql(principal("patient/Observation.rs")) == set()  # no patient claim


def test_rules_per_context(data: Data) -> None:
    comp = data.authorizer.compartment
    pol = AccessPolicy(principal("patient/*.rs", "p-1"), comp)
    assert pol.rule("Observation", "r").alternatives[0].compartment == "p-1"
    assert pol.rule("Observation", "c").deny
    assert pol.rule("Practitioner", "r").all  # shared, readable
    assert pol.rule("Practitioner", "u").deny
    assert pol.rule("Binary", "r").deny and pol.rule("Group", "s").deny
    assert pol.needed_scope("Condition", "c") == "patient/Condition.c"
    assert AccessPolicy(principal("system/*.cruds"), comp).rule("Binary", "d").all
    doctor = AccessPolicy(principal("user/*.rs", fhir_user="Practitioner/d-1"), comp)
    assert doctor.rule("Observation", "s").all  # the practitioner policy gap
    pat_user = AccessPolicy(principal("user/*.rs", fhir_user="Patient/p-2"), comp)
    assert pat_user.rule("Observation", "s").alternatives[0].compartment == "p-2"
    assert AccessPolicy(principal("user/*.rs"), comp).rule("Observation", "s").deny
    both = AccessPolicy(principal(f"patient/Observation.rs?category={CAT}|laboratory "
                                  "patient/Observation.rs", "p-1"), comp)
    assert len(both.rule("Observation", "s").alternatives) == 1  # unrestricted absorbs
    assert AccessPolicy(Principal(), comp).rule("Observation", "r").deny
    assert AccessPolicy(Principal(internal=True), comp).rule("Binary", "d").all


def test_internal_principal_is_never_made_from_a_request(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, auth="smart"))
    with TestClient(app) as client:
        smart = Smart(client)
        r = client.get("/fhir/Patient", headers={**smart.headers("system/Patient.rs"),
                                                 "X-Internal": "true"})
        assert r.status_code == 200
        assert Principal().internal is False
