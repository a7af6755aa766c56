"""Each SMART authorization decision is a FHIR Consent, written through the real authorize
flow: approval (before the code), deselected scopes, denial, and revocation on /auth/manage,
at /auth/revoke and by a replayed code."""

from __future__ import annotations

from typing import Any

import orjson

from app.audit.hashing import CONSENT_DENIED, CONSENT_GRANTED, CONSENT_REVOKED, Keyer, sha256
from app.consent.chain import decisions_of
from app.consent.records import CLIENT_SYSTEM, GRANT_SYSTEM, SMART_SCOPE_URL
from app.fhir.validation import validate_resource
from app.search.query import parse_search
from app.storage.base import StoredVersion
from tests.auth.authorize_flow import (
    APP_ID,
    APP_REDIRECT,
    CLINIC_ID,
    CLINIC_REDIRECT,
    DOCTOR_PASSWORD,
    DOCTOR_USER,
    PATIENT_PASSWORD,
    PATIENT_USER,
    World,
    approval_page,
    approve,
    authorize_params,
    code_from,
    exchange,
    flow_tokens,
    parse_page,
    pkce,
    redirect_query,
)
from tests.auth.test_authorize import _ehr_launch  # the EHR launcher walk

LAB = ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
       "observation-category|laboratory")


def consents(w: World, patient: str = "pat-000001") -> list[StoredVersion]:
    """The current versions of the patient's Consents, read from the FHIR store."""
    service = w.client.app.state.service  # type: ignore[attr-defined]

    async def run() -> list[StoredVersion]:
        query, issues = parse_search(("Consent",), [("patient", f"Patient/{patient}")],
                                     service.parse_ctx)
        assert not issues
        page = await service.store.search(query)
        return list(page.matches)

    assert w.client.portal is not None
    return w.client.portal.call(run)


def read_version(w: World, id_: str, version: int) -> StoredVersion:
    service = w.client.app.state.service  # type: ignore[attr-defined]
    assert w.client.portal is not None
    found = w.client.portal.call(service.store.vread, "Consent", id_, version)
    assert found is not None
    return found


def body(v: StoredVersion) -> dict[str, Any]:
    return dict(orjson.loads(v.body))


def assert_r4_valid(w: World, consent: dict[str, Any]) -> None:
    registry = w.client.app.state.service.registry  # type: ignore[attr-defined]
    errors = [i for i in validate_resource(consent, registry)
              if i.severity in ("error", "fatal")]
    assert errors == [], errors


def scope_of(provision: dict[str, Any]) -> str:
    [ext] = [e for e in provision["extension"] if e["url"] == SMART_SCOPE_URL]
    return str(ext["valueString"])


def test_approval_records_one_active_consent_naming_the_app_and_the_granted_scopes(
        w: World) -> None:
    tokens = flow_tokens(w)
    gid = w.client.app.state.keyring.verify(tokens["access_token"])["gid"]  # type: ignore
    [stored] = consents(w)
    consent = body(stored)
    assert stored.version == 1
    assert consent["id"] == f"smart-grant-{gid}"
    assert consent["status"] == "active"
    assert consent["identifier"] == [{"system": GRANT_SYSTEM, "value": gid}]
    assert consent["scope"]["coding"][0]["code"] == "patient-privacy"
    assert consent["category"][0]["coding"][0] == {
        "system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}
    assert consent["patient"] == {"reference": "Patient/pat-000001"}
    assert consent["performer"] == [{"reference": "Patient/pat-000001"}]
    assert consent["policyRule"]["coding"][0]["code"] == "OPTIN"
    top = consent["provision"]
    assert top["type"] == "permit"
    [actor] = top["actor"]
    assert actor["role"]["coding"][0]["code"] == "IRCP"
    assert actor["reference"] == {"identifier": {"system": CLIENT_SYSTEM, "value": APP_ID},
                                  "display": "健康助手"}
    grant = w.store.get_grant(gid)
    assert grant is not None
    assert top["period"]["start"] <= top["period"]["end"]
    nested = {scope_of(p): p for p in top["provision"]}
    assert set(nested) == {"patient/Patient.rs", "patient/Observation.rs",
                           "patient/Condition.rs"}
    assert all(p["type"] == "permit" for p in nested.values())
    assert nested["patient/Observation.rs"]["class"] == [
        {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]
    assert nested["patient/Observation.rs"]["action"][0]["coding"][0]["code"] == "access"
    assert_r4_valid(w, consent)


def test_approval_consent_decisions_cover_every_granted_scope(w: World, keyer: Keyer) -> None:
    flow_tokens(w)
    [stored] = consents(w)
    decisions = decisions_of(body(stored), stored.body, keyer)
    assert sorted(text for text, _ in decisions) == [
        f"client:{APP_ID} scope:patient/Condition.rs",
        f"client:{APP_ID} scope:patient/Observation.rs",
        f"client:{APP_ID} scope:patient/Patient.rs"]
    for text, entry in decisions:
        assert entry[:32] == keyer.key("Patient/pat-000001")
        assert entry[32:64] == keyer.key(f"client:{APP_ID}")
        assert entry[64:96] == keyer.key(text.split(" ", 1)[1])
        assert entry[96] == CONSENT_GRANTED
        assert int.from_bytes(entry[97:105], "big") > 0
        assert entry[105:] == sha256(stored.body)


def test_a_deselected_scope_is_a_deny_provision_and_a_category_a_coded_permit(
        w: World, keyer: Keyer) -> None:
    verifier, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    r = approve(w.client, page, scopes=["patient/Patient.rs", LAB])
    assert exchange(w.client, code_from(r), verifier).status_code == 200
    [stored] = consents(w)
    consent = body(stored)
    nested = {scope_of(p): p for p in consent["provision"]["provision"]}
    assert nested["patient/Patient.rs"]["type"] == "permit"
    assert nested[LAB]["type"] == "permit"
    assert nested[LAB]["code"] == [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "laboratory"}]}]
    # Condition was deselected; Observation was narrowed, not deselected
    assert nested["patient/Condition.rs"]["type"] == "deny"
    assert "patient/Observation.rs" not in nested
    assert_r4_valid(w, consent)
    status = {text.split(" ", 1)[1]: entry[96]
              for text, entry in decisions_of(consent, stored.body, keyer)}
    assert status == {"scope:patient/Patient.rs": CONSENT_GRANTED,
                      f"scope:{LAB}": CONSENT_GRANTED,
                      "scope:patient/Condition.rs": CONSENT_DENIED}


def test_denial_records_a_rejected_consent_and_issues_no_code(w: World, keyer: Keyer) -> None:
    _, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    r = approve(w.client, page, decision="deny")
    assert r.status_code == 303
    query = redirect_query(r)
    assert query["error"] == ["access_denied"] and "code" not in query
    [stored] = consents(w)
    consent = body(stored)
    assert consent["status"] == "rejected"
    assert consent["policyRule"]["coding"][0]["code"] == "OPTOUT"
    assert "identifier" not in consent
    assert consent["provision"]["type"] == "deny"
    assert consent["provision"]["actor"][0]["reference"]["identifier"]["value"] == APP_ID
    assert {scope_of(p) for p in consent["provision"]["provision"]} == {
        "patient/Patient.rs", "patient/Observation.rs", "patient/Condition.rs"}
    assert_r4_valid(w, consent)
    assert {e[96] for _, e in decisions_of(consent, stored.body, keyer)} == {CONSENT_DENIED}
    assert w.store.list_grants(PATIENT_USER, 0.0) == []


def test_revoking_the_grant_on_manage_makes_its_consent_inactive(w: World,
                                                                 keyer: Keyer) -> None:
    tokens = flow_tokens(w)
    page = parse_page(w.client.get("/auth/manage").text)
    grant_id = page.value("grant_id")
    r = w.client.post("/auth/manage", data={"csrf": page.value("csrf"), "grant_id": grant_id},
                      follow_redirects=False)
    assert r.status_code == 303
    [stored] = consents(w)
    assert stored.id == f"smart-grant-{grant_id}" and stored.version == 2
    consent = body(stored)
    assert consent["status"] == "inactive"
    first = body(read_version(w, stored.id, 1))
    assert first["status"] == "active"
    assert consent["provision"]["provision"] == first["provision"]["provision"]
    assert consent["provision"]["period"]["end"] <= first["provision"]["period"]["end"]
    assert_r4_valid(w, consent)
    assert {e[96] for _, e in decisions_of(consent, stored.body, keyer)} == {CONSENT_REVOKED}
    # revoking again changes nothing
    page = parse_page(w.client.get("/auth/manage").text)
    w.client.post("/auth/manage", data={"csrf": page.value("csrf"), "grant_id": grant_id},
                  follow_redirects=False)
    assert consents(w)[0].version == 2
    refresh = w.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                 "refresh_token": tokens["refresh_token"],
                                                 "client_id": APP_ID})
    assert refresh.status_code == 400


def test_revoking_the_refresh_token_makes_the_consent_inactive(w: World) -> None:
    tokens = flow_tokens(w)
    r = w.client.post("/auth/revoke", data={"token": tokens["refresh_token"],
                                            "client_id": APP_ID})
    assert r.status_code == 200
    [stored] = consents(w)
    assert stored.version == 2 and body(stored)["status"] == "inactive"


def test_a_replayed_code_makes_the_consent_inactive(w: World) -> None:
    verifier, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    code = code_from(approve(w.client, page))
    assert exchange(w.client, code, verifier).status_code == 200
    assert exchange(w.client, code, verifier).status_code == 400
    [stored] = consents(w)
    assert stored.version == 2 and body(stored)["status"] == "inactive"


def test_ehr_launch_consent_names_the_practitioner_as_performer(w: World) -> None:
    launch = _ehr_launch(w, patient="pat-000002", encounter="enc-0002")
    _, challenge = pkce()
    params = authorize_params(client_id=CLINIC_ID, redirect_uri=CLINIC_REDIRECT,
                              scope="launch openid fhirUser user/*.rs", challenge=challenge,
                              launch=launch)
    _, page = approval_page(w.client, params, DOCTOR_USER, DOCTOR_PASSWORD)
    code_from(approve(w.client, page), CLINIC_REDIRECT)
    assert consents(w, "pat-000001") == []
    [stored] = consents(w, "pat-000002")
    consent = body(stored)
    assert consent["performer"] == [{"reference": "Practitioner/prac-0001"}]
    assert consent["provision"]["actor"][0]["reference"]["display"] == "门诊工作站"
    [nested] = consent["provision"]["provision"]
    assert scope_of(nested) == "user/*.rs" and "class" not in nested
    assert_r4_valid(w, consent)


def test_no_consent_without_a_patient_in_context(w: World) -> None:
    verifier, challenge = pkce()
    params = authorize_params(scope="openid fhirUser user/Patient.rs", challenge=challenge)
    _, page = approval_page(w.client, params, DOCTOR_USER, DOCTOR_PASSWORD)
    r = approve(w.client, page)
    assert exchange(w.client, code_from(r), verifier).status_code == 200
    assert consents(w, "pat-000001") == [] and consents(w, "pat-000002") == []


def test_no_code_when_the_consent_cannot_be_written(w: World) -> None:
    _, challenge = pkce()
    _, page = approval_page(w.client, authorize_params(challenge=challenge), PATIENT_USER,
                            PATIENT_PASSWORD)
    store = w.client.app.state.store  # type: ignore[attr-defined]
    assert w.client.portal is not None
    w.client.portal.call(store.close)  # the FHIR store is gone: the Consent cannot be written
    r = approve(w.client, page)
    assert r.status_code == 503
    assert "location" not in r.headers and "code=" not in r.text
    assert w.store.list_grants(PATIENT_USER, 0.0) == []
    assert not r.headers.get("location", "").startswith(APP_REDIRECT)
