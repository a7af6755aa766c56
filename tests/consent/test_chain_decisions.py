"""`decisions_of`: FHIR R4 Consents (the authorization server's and ones clients post) to
137-byte ConsentRegistry entries, checked field by field."""

from __future__ import annotations

import calendar
from typing import Any

import pytest

from app.audit.hashing import (
    CONSENT_DENIED,
    CONSENT_ENTRY_SIZE,
    CONSENT_GRANTED,
    CONSENT_REVOKED,
    ZERO32,
    Keyer,
    canonical_json,
    sha256,
)
from app.auth.scopes import parse_scopes
from app.consent.chain import decisions_of, expires_at, patient_id
from app.consent.records import (
    approval_consent,
    denial_consent,
    revoked_consent,
    withheld_scopes,
)
from app.definitions.registry import load_registry
from app.fhir.validation import validate_resource

APPROVED_AT = calendar.timegm((2026, 11, 23, 8, 30, 0))  # 2026-11-23T08:30:00Z
GRANT_ENDS = APPROVED_AT + 90 * 86400
GRANT_ID = "9f2c4e6a8b0d1f3e5a7c9b2d4f6e8a0c"
LAB = ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
       "observation-category|laboratory")
REQUESTED = ("launch/patient openid fhirUser offline_access patient/Patient.rs "
             "patient/Observation.rs patient/Condition.rs patient/MedicationRequest.rs")


def fields(entry: bytes) -> tuple[bytes, bytes, bytes, int, int, bytes]:
    assert len(entry) == CONSENT_ENTRY_SIZE
    return (entry[:32], entry[32:64], entry[64:96], entry[96],
            int.from_bytes(entry[97:105], "big"), entry[105:])


def stored(consent: dict[str, Any], id_: str = "consent-0001", version: int = 1,
           ) -> tuple[dict[str, Any], bytes]:
    """The Consent as the store keeps it (id, meta) and its canonical JSON."""
    out = {**consent, "id": id_, "meta": {"versionId": str(version),
                                          "lastUpdated": "2026-11-23T08:30:00.123Z"}}
    return out, canonical_json(out)


def approval(granted: str) -> dict[str, Any]:
    requested = parse_scopes(REQUESTED).scopes
    chosen = parse_scopes(granted).scopes
    return approval_consent(
        grant_id=GRANT_ID, client_id="jiankang-zhushou", client_name="健康助手",
        patient="pat-000001", performer="Patient/pat-000001",
        organization="Organization/org-bjxh", granted=chosen,
        withheld=withheld_scopes(requested, chosen), start=APPROVED_AT, end=GRANT_ENDS)


def test_every_consent_the_authorization_server_writes_is_valid_r4() -> None:
    registry = load_registry()
    granted = approval(f"launch/patient patient/Patient.rs {LAB}")
    denied = denial_consent(client_id="jiankang-zhushou", client_name="健康助手\x07",
                            patient="pat-000001", performer="Patient/pat-000001",
                            organization=None, requested=parse_scopes(REQUESTED).scopes,
                            at=APPROVED_AT)
    revoked = revoked_consent(stored(granted)[0], APPROVED_AT + 3600)
    for consent in (granted, denied, revoked):
        errors = [i for i in validate_resource({"id": "consent-0001", **consent}, registry)
                  if i.severity in ("error", "fatal")]
        assert errors == [], errors
    assert denied["provision"]["actor"][0]["reference"]["display"] == "健康助手"


def test_granted_scopes_are_granted_until_the_grant_ends(keyer: Keyer) -> None:
    consent, body = stored(approval("launch/patient patient/Patient.rs patient/Observation.rs"))
    decisions = decisions_of(consent, body, keyer)
    texts = [t for t, _ in decisions]
    assert texts == ["client:jiankang-zhushou scope:patient/Observation.rs",
                     "client:jiankang-zhushou scope:patient/Patient.rs",
                     "client:jiankang-zhushou scope:patient/Condition.rs",
                     "client:jiankang-zhushou scope:patient/MedicationRequest.rs"]
    expected_status = [CONSENT_GRANTED, CONSENT_GRANTED, CONSENT_DENIED, CONSENT_DENIED]
    for (text, entry), status in zip(decisions, expected_status, strict=True):
        patient, grantee, scope, code, expires, decision = fields(entry)
        assert patient == keyer.key("Patient/pat-000001")
        assert grantee == keyer.key("client:jiankang-zhushou")
        assert scope == keyer.key(text.split(" ", 1)[1])
        assert code == status
        assert expires == GRANT_ENDS
        assert decision == sha256(body)


def test_a_category_narrowed_scope_is_keyed_by_its_exact_scope_text(keyer: Keyer) -> None:
    consent, body = stored(approval(f"patient/Patient.rs {LAB}"))
    [lab] = [e for t, e in decisions_of(consent, body, keyer) if "laboratory" in t]
    _, _, scope, code, expires, _ = fields(lab)
    assert scope == keyer.key(f"scope:{LAB}")
    assert scope != keyer.key("scope:patient/Observation.rs")
    assert code == CONSENT_GRANTED and expires == GRANT_ENDS


def test_a_revoked_version_revokes_every_decision_from_the_revocation(keyer: Keyer) -> None:
    first, _ = stored(approval("patient/Patient.rs patient/Observation.rs"))
    revoked_at = APPROVED_AT + 7 * 86400
    consent, body = stored(revoked_consent(first, revoked_at), version=2)
    assert consent["status"] == "inactive" and consent["meta"]["versionId"] == "2"
    decisions = decisions_of(consent, body, keyer)
    assert len(decisions) == 4
    for _, entry in decisions:
        patient, grantee, _, code, expires, decision = fields(entry)
        assert patient == keyer.key("Patient/pat-000001")
        assert grantee == keyer.key("client:jiankang-zhushou")
        assert code == CONSENT_REVOKED
        assert expires == revoked_at
        assert decision == sha256(body)


def test_a_denial_denies_every_requested_scope_without_expiry(keyer: Keyer) -> None:
    consent, body = stored(denial_consent(
        client_id="menzhen-gongzuozhan", client_name="门诊工作站", patient="pat-000002",
        performer="Practitioner/prac-0001", organization="Organization/org-bjxh",
        requested=parse_scopes("launch user/Patient.rs user/Observation.rs").scopes,
        at=APPROVED_AT))
    decisions = decisions_of(consent, body, keyer)
    assert [t for t, _ in decisions] == ["client:menzhen-gongzuozhan scope:user/Observation.rs",
                                         "client:menzhen-gongzuozhan scope:user/Patient.rs"]
    for _, entry in decisions:
        patient, grantee, _, code, expires, _ = fields(entry)
        assert patient == keyer.key("Patient/pat-000002")
        assert grantee == keyer.key("client:menzhen-gongzuozhan")
        assert code == CONSENT_DENIED and expires == 0


RESEARCH_CONSENT: dict[str, Any] = {
    # posted by a research coordinator: 北京协和医院 may share 张三's lab results with a
    # research organisation until the end of June 2027, but not his diagnoses
    "resourceType": "Consent",
    "status": "active",
    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                          "code": "research"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "http://127.0.0.1:8080/fhir/Patient/pat-000001"},
    "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                               "code": "OPTIN"}]},
    "provision": {
        "type": "permit",
        "period": {"start": "2026-12-01", "end": "2027-06-30"},
        "actor": [{"role": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "IRCP"}]},
            "reference": {"reference": "Organization/org-zhongke-yanjiu",
                          "display": "中科医学研究院"}}],
        "provision": [
            {"type": "permit",
             "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
             "code": [{"coding": [{
                 "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                 "code": "laboratory"}]}]},
            {"type": "deny",
             "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}],
             "period": {"end": "2027-03-31T23:59:59+08:00"}},
        ],
    },
}


def test_a_client_consent_is_keyed_by_organisation_and_class(keyer: Keyer) -> None:
    consent, body = stored(RESEARCH_CONSENT)
    decisions = decisions_of(consent, body, keyer)
    lab_scope = ("class:Observation?code=http://terminology.hl7.org/CodeSystem/"
                 "observation-category|laboratory")
    assert [t for t, _ in decisions] == [f"Organization/org-zhongke-yanjiu {lab_scope}",
                                         "Organization/org-zhongke-yanjiu class:Condition"]
    end_of_june = calendar.timegm((2027, 7, 1, 0, 0, 0))  # the whole of 2027-06-30 (UTC)
    end_of_march = calendar.timegm((2027, 3, 31, 15, 59, 59))  # +08:00
    (_, lab), (_, condition) = decisions
    assert fields(lab) == (keyer.key("Patient/pat-000001"),
                           keyer.key("Organization/org-zhongke-yanjiu"),
                           keyer.key(lab_scope), CONSENT_GRANTED, end_of_june, sha256(body))
    assert fields(condition) == (keyer.key("Patient/pat-000001"),
                                 keyer.key("Organization/org-zhongke-yanjiu"),
                                 keyer.key("class:Condition"), CONSENT_DENIED, end_of_march,
                                 sha256(body))


def test_a_consent_without_actors_names_any_grantee(keyer: Keyer) -> None:
    consent = {**RESEARCH_CONSENT, "provision": {
        "type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types",
                                     "code": "ImagingStudy"}]}}
    stored_consent, body = stored(consent)
    [(text, entry)] = decisions_of(stored_consent, body, keyer)
    assert text == "any class:ImagingStudy"
    assert fields(entry) == (keyer.key("Patient/pat-000001"), keyer.key("any"),
                             keyer.key("class:ImagingStudy"), CONSENT_GRANTED, 0, sha256(body))


def test_an_opt_out_without_provisions_denies_everything_to_anyone(keyer: Keyer) -> None:
    consent = {k: v for k, v in RESEARCH_CONSENT.items() if k != "provision"}
    consent["policyRule"] = {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]}
    stored_consent, body = stored(consent)
    [(text, entry)] = decisions_of(stored_consent, body, keyer)
    assert text == "any all"
    assert fields(entry)[1:5] == (keyer.key("any"), keyer.key("all"), CONSENT_DENIED, 0)


@pytest.mark.parametrize("status,code", [("rejected", CONSENT_DENIED),
                                         ("inactive", CONSENT_REVOKED),
                                         ("entered-in-error", CONSENT_REVOKED)])
def test_consent_status_decides_over_provision_type(keyer: Keyer, status: str,
                                                    code: int) -> None:
    consent, body = stored({**RESEARCH_CONSENT, "status": status})
    assert {fields(e)[3] for _, e in decisions_of(consent, body, keyer)} == {code}


@pytest.mark.parametrize("status", ["draft", "proposed"])
def test_draft_and_proposed_consents_decide_nothing(keyer: Keyer, status: str) -> None:
    consent, body = stored({**RESEARCH_CONSENT, "status": status})
    assert decisions_of(consent, body, keyer) == []


def test_a_consent_without_a_patient_has_a_zero_patient_hash(keyer: Keyer) -> None:
    consent = {k: v for k, v in RESEARCH_CONSENT.items() if k != "patient"}
    stored_consent, body = stored(consent)
    assert {fields(e)[0] for _, e in decisions_of(stored_consent, body, keyer)} == {ZERO32}


def test_each_version_has_its_own_decision_hash(keyer: Keyer) -> None:
    one, body1 = stored(RESEARCH_CONSENT, version=1)
    two, body2 = stored(RESEARCH_CONSENT, version=2)
    hashes = {fields(e)[5] for c, b in ((one, body1), (two, body2))
              for _, e in decisions_of(c, b, keyer)}
    assert hashes == {sha256(body1), sha256(body2)}


def test_duplicate_provisions_give_one_entry(keyer: Keyer) -> None:
    nested = {"type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types",
                                           "code": "Observation"}]}
    consent = {**RESEARCH_CONSENT, "provision": {**RESEARCH_CONSENT["provision"],
                                                 "provision": [nested, dict(nested)]}}
    stored_consent, body = stored(consent)
    assert len(decisions_of(stored_consent, body, keyer)) == 1


@pytest.mark.parametrize("reference,expected", [
    ({"reference": "Patient/pat-000001"}, "pat-000001"),
    ({"reference": "https://fhir.bjxh.cn/fhir/Patient/pat-000001/_history/3"}, "pat-000001"),
    ({"reference": "Group/grp-01"}, None),
    ({"identifier": {"system": "urn:oid:2.16.156.10011.1.10", "value": "x"}}, None),
    ("Patient/pat-000001", None),
])
def test_patient_id_of_a_reference(reference: Any, expected: str | None) -> None:
    assert patient_id(reference) == expected


@pytest.mark.parametrize("end,expected", [
    ("2027-06-30T12:00:00Z", calendar.timegm((2027, 6, 30, 12, 0, 0))),
    ("2027-06-30T12:00:00.999+08:00", calendar.timegm((2027, 6, 30, 4, 0, 0))),
    ("2027-06", calendar.timegm((2027, 7, 1, 0, 0, 0))),
    ("2027", calendar.timegm((2028, 1, 1, 0, 0, 0))),
    ("not a date", None),
    (None, None),
])
def test_period_end_in_unix_seconds(end: str | None, expected: int | None) -> None:
    assert expires_at({"start": "2026-11-23", "end": end} if end else {}) == expected


def test_an_oversized_consent_is_one_summary_decision(keyer: Keyer) -> None:
    actors = [{"role": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "code": "IRCP"}]}, "reference": {"reference": f"Organization/org-{i:04d}"}}
        for i in range(30)]
    classes = [{"system": "http://hl7.org/fhir/resource-types", "code": t}
               for t in ("Observation", "Condition", "Procedure", "MedicationRequest",
                         "DiagnosticReport", "Encounter", "Immunization", "AllergyIntolerance",
                         "CarePlan", "ImagingStudy")]
    consent = {**RESEARCH_CONSENT, "provision": {"type": "permit", "actor": actors,
                                                 "class": classes}}
    stored_consent, body = stored(consent)
    [(text, entry)] = decisions_of(stored_consent, body, keyer)  # 300 pairs
    assert text == "any all"
    assert fields(entry) == (keyer.key("Patient/pat-000001"), keyer.key("any"),
                             keyer.key("all"), CONSENT_GRANTED, 0, sha256(body))
