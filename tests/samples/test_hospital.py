"""The synthetic hospital: valid R4, internally consistent, deterministic, and realistic."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner

from app.samples.hospital import (
    AS_OF,
    CS_ICD10,
    CS_SEX,
    DISEASES_BY_CODE,
    EXT_ETHNICITY,
    EXT_SEX,
    INTERPRETATION,
    LIS_ITEM_SYSTEM,
    LOINC,
    OID_ID_CARD,
    OID_MRN,
    OID_ORG,
    PANELS,
    UCUM,
    WINDOW_START,
    HospitalGenerator,
    transaction_bundle,
)
from app.samples.identity import parse_id

MODELS: dict[str, Any] = {
    "Organization": Organization, "Practitioner": Practitioner, "Patient": Patient,
    "Encounter": Encounter, "Condition": Condition, "Observation": Observation,
    "DiagnosticReport": DiagnosticReport,
}
DATETIME_WITH_TZ = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+08:00$")
UCUM_CODES = {"10*9/L", "10*12/L", "g/L", "U/L", "umol/L", "mmol/L", "%", "fL"}


@pytest.fixture(scope="module")
def population() -> list[dict[str, Any]]:
    return list(HospitalGenerator().population(patients=60, observations_per_patient=25))


@pytest.fixture(scope="module")
def many_patients() -> list[dict[str, Any]]:
    return list(HospitalGenerator().patients(20000))


def of_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def empties(node: Any, path: str = "") -> Iterator[str]:
    if node in ("", [], {}) or node is None:
        yield path
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from empties(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from empties(value, f"{path}[{i}]")
    elif isinstance(node, str) and node != node.strip():
        yield path + " (surrounding whitespace)"


def identifier(resource: dict[str, Any], system: str) -> str:
    return next(i["value"] for i in resource["identifier"] if i["system"] == system)


# -- R4 validity --------------------------------------------------------------------------------

def test_every_generated_resource_validates_against_the_fhir_resources_models(
        population: list[dict[str, Any]]) -> None:
    counts = Counter(r["resourceType"] for r in population)
    assert set(counts) == set(MODELS)
    for resource in population:
        MODELS[resource["resourceType"]].model_validate(resource)


def test_no_resource_contains_empty_strings_arrays_objects_or_nulls(
        population: list[dict[str, Any]]) -> None:
    problems = [(r["id"], p) for r in population for p in empties(r)]
    assert problems == []


def test_resources_are_plain_json(population: list[dict[str, Any]]) -> None:
    assert json.loads(json.dumps(population)) == population


def test_every_date_time_carries_the_china_offset(population: list[dict[str, Any]]) -> None:
    stamps = []
    for r in population:
        stamps += [r[k] for k in ("effectiveDateTime", "issued", "recordedDate") if k in r]
        if "period" in r:
            stamps += [r["period"]["start"], r["period"]["end"]]
    assert len(stamps) > 1000
    assert [s for s in stamps if not DATETIME_WITH_TZ.match(s)] == []


# -- Referential integrity and ids --------------------------------------------------------------

def test_population_is_in_dependency_order_so_every_reference_resolves_to_an_earlier_resource(
        population: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for resource in population:
        for ref in references(resource):
            assert ref in seen, f"{resource['resourceType']}/{resource['id']} -> {ref}"
        seen.add(f"{resource['resourceType']}/{resource['id']}")


def test_ids_are_unique_and_follow_the_documented_patterns(
        population: list[dict[str, Any]]) -> None:
    keys = [f"{r['resourceType']}/{r['id']}" for r in population]
    assert len(keys) == len(set(keys))
    patterns = {
        "Organization": r"org-\d{4}", "Practitioner": r"prac-\d{4}", "Patient": r"pat-\d{6}",
        "Encounter": r"enc-\d{6}-\d{2}", "Condition": r"cond-\d{6}-\d{2}-\d",
        "Observation": r"obs-\d{6}-\d{4}", "DiagnosticReport": r"dr-\d{6}-\d{4}",
    }
    for r in population:
        assert re.fullmatch(patterns[r["resourceType"]], r["id"]), r["id"]
    assert of_type(population, "Patient")[0]["id"] == "pat-000001"
    assert of_type(population, "Observation")[0]["id"] == "obs-000001-0001"


def test_each_patient_gets_exactly_the_requested_number_of_observations(
        population: list[dict[str, Any]]) -> None:
    per_patient = Counter(o["subject"]["reference"] for o in of_type(population, "Observation"))
    assert len(per_patient) == 60
    assert set(per_patient.values()) == {25}


def test_population_yields_each_patients_records_in_the_documented_order(
        population: list[dict[str, Any]]) -> None:
    rank = {"Organization": 0, "Practitioner": 1, "Patient": 2, "Encounter": 3, "Condition": 4}
    previous = 0
    for r in population:
        current = rank.get(r["resourceType"], 5)
        if current == 2:
            previous = 2
        assert current >= previous, r["id"]
        previous = current


# -- Determinism --------------------------------------------------------------------------------

def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    def dump(seed: int) -> str:
        return json.dumps(list(HospitalGenerator(seed).population(5, 12)), ensure_ascii=False)

    assert dump(7) == dump(7)
    assert dump(7) != dump(8)
    assert dump(20261123) == json.dumps(list(HospitalGenerator().population(5, 12)),
                                        ensure_ascii=False)


def test_a_patients_records_regenerate_from_the_patient_alone() -> None:
    patient = list(HospitalGenerator().patients(30))[-1]
    first = HospitalGenerator()
    again = HospitalGenerator()
    enc_a = list(first.encounters(patient, 3))
    enc_b = list(again.encounters(copy.deepcopy(patient), 3))
    assert enc_a == enc_b
    assert list(first.conditions(patient, enc_a[1])) == list(again.conditions(patient, enc_b[1]))
    assert (list(first.lab_panel(patient, enc_a[0], "血常规", report_seq=4, obs_seq=30))
            == list(again.lab_panel(patient, enc_b[0], "血常规", report_seq=4, obs_seq=30)))


# -- Patients -----------------------------------------------------------------------------------

def test_id_card_number_is_valid_and_agrees_with_birth_date_and_both_sex_codes(
        many_patients: list[dict[str, Any]]) -> None:
    for p in many_patients:
        _, birth, sex = parse_id(identifier(p, OID_ID_CARD))
        assert p["birthDate"] == birth.isoformat()
        assert p["gender"] == sex
        gb = p["_gender"]["extension"][0]
        assert gb["url"] == EXT_SEX
        assert gb["valueCoding"]["system"] == CS_SEX
        assert gb["valueCoding"]["code"] == {"male": "1", "female": "2"}[sex]


def test_id_card_numbers_are_unique_and_come_from_many_provinces(
        many_patients: list[dict[str, Any]]) -> None:
    numbers = [identifier(p, OID_ID_CARD) for p in many_patients]
    assert len(set(numbers)) == len(numbers)
    assert len({n[:2] for n in numbers}) >= 20
    assert 0.35 < sum(n.startswith("11") for n in numbers) / len(numbers) < 0.6


def test_patients_are_adults_with_a_hospital_like_age_mix(
        many_patients: list[dict[str, Any]]) -> None:
    ages = [(AS_OF - date.fromisoformat(p["birthDate"])).days // 365 for p in many_patients]
    assert min(ages) >= 20
    assert max(ages) <= 96
    assert 0.3 < sum(a >= 60 for a in ages) / len(ages) < 0.5


def test_surnames_follow_the_national_distribution_with_rare_and_compound_ones(
        many_patients: list[dict[str, Any]]) -> None:
    families = Counter(p["name"][0].get("family") for p in many_patients)
    top = {name for name, _ in families.most_common(5)}
    assert {"王", "李", "张", "刘"} <= top
    for rare in ("单", "曾", "欧阳", "司马"):
        assert families[rare] > 0, rare
    for p in many_patients:
        name = p["name"][0]
        if "family" in name and "·" not in name["text"]:
            assert name["text"] == name["family"] + name["given"][0]


def test_minority_naming_customs_are_kept(many_patients: list[dict[str, Any]]) -> None:
    def ethnicity(p: dict[str, Any]) -> str:
        ext = next(e for e in p["extension"] if e["url"] == EXT_ETHNICITY)
        return str(ext["valueCodeableConcept"]["coding"][0]["display"])

    without_family = [p for p in many_patients if "family" not in p["name"][0]]
    with_dot = [p for p in many_patients if "·" in p["name"][0]["text"]]
    assert without_family and with_dot
    assert {ethnicity(p) for p in without_family} == {"藏族"}
    assert {ethnicity(p) for p in with_dot} == {"维吾尔族"}
    assert Counter(ethnicity(p) for p in many_patients).most_common(1)[0][0] == "汉族"


def test_contact_details_look_like_mainland_ones(many_patients: list[dict[str, Any]]) -> None:
    for p in many_patients[:2000]:
        assert re.fullmatch(r"1[3-9]\d{9}", p["telecom"][0]["value"])
        address = p["address"][0]
        assert address["country"] == "CN"
        assert address["text"].startswith(address["state"])
        assert address["district"].endswith("区")
        assert re.fullmatch(r"\d{6}", address["postalCode"])
        assert re.fullmatch(r"\d{8}", identifier(p, OID_MRN))


# -- Organization and practitioners -------------------------------------------------------------

def test_hospital_has_a_valid_unified_social_credit_code() -> None:
    org = HospitalGenerator().organization()
    code = identifier(org, OID_ORG)
    chars = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    weights = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
    total = sum(chars.index(c) * w for c, w in zip(code[:17], weights, strict=True))
    assert code.startswith("12110000")  # 事业单位 registered in Beijing
    assert code[17] == chars[(31 - total % 31) % 31]
    assert org["type"][0]["text"] == "三级甲等综合医院"


def test_generator_refuses_fewer_doctors_than_departments() -> None:
    with pytest.raises(ValueError, match="one per department"):
        HospitalGenerator(practitioner_count=3)


# -- Encounters and conditions ------------------------------------------------------------------

def test_encounters_are_ordered_finished_and_inside_the_window(
        population: list[dict[str, Any]]) -> None:
    births = {f"Patient/{p['id']}": date.fromisoformat(p["birthDate"])
              for p in of_type(population, "Patient")}
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for e in of_type(population, "Encounter"):
        by_patient.setdefault(e["subject"]["reference"], []).append(e)
        start = datetime.fromisoformat(e["period"]["start"])
        end = datetime.fromisoformat(e["period"]["end"])
        assert start < end
        assert start.date() >= WINDOW_START
        assert end.date() <= AS_OF
        assert (start.date() - births[e["subject"]["reference"]]).days >= 18 * 365
        assert e["class"]["code"] in {"AMB", "EMER", "IMP"}
        assert e["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
        if e["class"]["code"] == "EMER":
            assert e["serviceType"]["text"] == "急诊科"
        if e["class"]["code"] == "IMP":
            assert e["hospitalization"]["admitSource"]["coding"][0]["code"] in {"1", "2", "3"}
    for encounters in by_patient.values():
        starts = [e["period"]["start"] for e in encounters]
        assert starts == sorted(starts)


def test_conditions_use_national_icd10_codes_and_agree_across_encounters(
        population: list[dict[str, Any]]) -> None:
    onsets: dict[tuple[str, str], set[str]] = {}
    for c in of_type(population, "Condition"):
        coding = c["code"]["coding"][0]
        assert coding["system"] == CS_ICD10
        assert DISEASES_BY_CODE[coding["code"]].display == coding["display"]
        assert c["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
        assert c["verificationStatus"]["coding"][0]["code"] == "confirmed"
        if DISEASES_BY_CODE[coding["code"]].chronic:
            onsets.setdefault((c["subject"]["reference"], coding["code"]), set()).add(
                c["onsetDateTime"])
    assert all(len(v) == 1 for v in onsets.values())
    encounters = {f"Encounter/{e['id']}": e for e in of_type(population, "Encounter")}
    for c in of_type(population, "Condition"):
        if c["id"].endswith("-1"):  # the first diagnosis is the encounter's reason
            reason = encounters[c["encounter"]["reference"]]["reasonCode"][0]["coding"][0]
            assert reason["code"] == c["code"]["coding"][0]["code"]


# -- Laboratory ---------------------------------------------------------------------------------

def test_interpretation_flag_matches_value_against_reference_range(
        population: list[dict[str, Any]]) -> None:
    flags: Counter[str] = Counter()
    for o in of_type(population, "Observation"):
        value = o["valueQuantity"]["value"]
        rng = o["referenceRange"][0]
        low, high = rng["low"]["value"], rng["high"]["value"]
        expected = "H" if value > high else "L" if value < low else "N"
        coding = o["interpretation"][0]["coding"][0]
        assert coding["system"] == INTERPRETATION
        assert coding["code"] == expected, o["id"]
        assert rng["low"]["code"] == rng["high"]["code"] == o["valueQuantity"]["code"]
        flags[expected] += 1
    total = sum(flags.values())
    assert 0.75 < flags["N"] / total < 0.95  # a hospital population: mostly normal, not all


def test_observations_carry_loinc_a_local_code_and_ucum_units(
        population: list[dict[str, Any]]) -> None:
    for o in of_type(population, "Observation"):
        systems = [c["system"] for c in o["code"]["coding"]]
        assert systems == [LOINC, LIS_ITEM_SYSTEM]
        assert o["valueQuantity"]["system"] == UCUM
        assert o["valueQuantity"]["code"] in UCUM_CODES
        assert o["category"][0]["coding"][0]["code"] == "laboratory"
        assert o["status"] == "final"


def test_reports_group_their_panels_observations(population: list[dict[str, Any]]) -> None:
    observations = {f"Observation/{o['id']}": o for o in of_type(population, "Observation")}
    grouped: list[str] = []
    for report in of_type(population, "DiagnosticReport"):
        panel = PANELS[report["code"]["text"]]
        members = [observations[r["reference"]] for r in report["result"]]
        local_codes = [m["code"]["coding"][1]["code"] for m in members]
        assert local_codes == list(panel.items[:len(members)])
        for m in members:
            assert m["subject"] == report["subject"]
            assert m["encounter"] == report["encounter"]
            assert m["effectiveDateTime"] == report["effectiveDateTime"]
        assert report["code"]["coding"][0] == {"system": LOINC, "code": panel.loinc,
                                               "display": panel.loinc_display}
        grouped += [r["reference"] for r in report["result"]]
    assert sorted(grouped) == sorted(observations)


def test_blood_count_values_are_physiologically_coherent(
        population: list[dict[str, Any]]) -> None:
    reports = [r for r in of_type(population, "DiagnosticReport") if r["code"]["text"] == "血常规"
               and len(r["result"]) == len(PANELS["血常规"].items)]
    observations = {f"Observation/{o['id']}": o for o in of_type(population, "Observation")}
    assert reports
    for report in reports:
        v = {observations[r["reference"]]["code"]["coding"][1]["code"]:
             observations[r["reference"]]["valueQuantity"]["value"] for r in report["result"]}
        assert v["NEUT%"] + v["LYMPH%"] <= 100
        assert abs(v["MCV"] - v["HCT"] / v["RBC"] * 10) < 0.5
        assert 0.27 < v["HCT"] / v["HGB"] < 0.33


def test_lab_results_move_with_the_encounters_diagnosis() -> None:
    g = HospitalGenerator()
    patient = next(p for p in g.patients(50) if p["gender"] == "male")
    base = next(iter(g.encounters(patient, 1)))

    def mean_wbc(code: str) -> float:
        encounter = copy.deepcopy(base)
        disease = DISEASES_BY_CODE[code]
        encounter["reasonCode"][0]["coding"][0].update(code=code, display=disease.display)
        values = [next(iter(g.lab_panel(patient, encounter, "血常规", report_seq=n)))
                  ["valueQuantity"]["value"] for n in range(1, 201)]
        return sum(values) / len(values)

    assert mean_wbc("J18.900") > mean_wbc("M51.202") + 2  # 肺炎 vs 腰椎间盘突出症


def test_lab_panel_can_be_cut_short_and_rejects_unknown_panels() -> None:
    g = HospitalGenerator()
    patient = next(iter(g.patients(1)))
    encounter = next(iter(g.encounters(patient, 1)))
    out = list(g.lab_panel(patient, encounter, "肾功能", report_seq=2, obs_seq=7, items=2))
    assert [r["id"] for r in out] == ["obs-000001-0007", "obs-000001-0008", "dr-000001-0002"]
    with pytest.raises(ValueError, match="血常规, 肝功能, 肾功能"):
        list(g.lab_panel(patient, encounter, "凝血功能"))
    with pytest.raises(ValueError, match="items must be 1-3"):
        list(g.lab_panel(patient, encounter, "肾功能", items=4))


# -- Transaction bundles ------------------------------------------------------------------------

def test_put_bundle_addresses_each_resource_by_type_and_id(
        population: list[dict[str, Any]]) -> None:
    resources = population[:120]
    bundle = transaction_bundle(resources, base_url="http://127.0.0.1:8080/fhir/")
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    for entry, resource in zip(bundle["entry"], resources, strict=True):
        key = f"{resource['resourceType']}/{resource['id']}"
        assert entry["request"] == {"method": "PUT", "url": key}
        assert entry["fullUrl"] == "http://127.0.0.1:8080/fhir/" + key
        assert entry["resource"] is resource


def test_post_bundle_rewrites_internal_references_to_urn_uuids_without_touching_the_input(
        population: list[dict[str, Any]]) -> None:
    patients = [i for i, r in enumerate(population) if r["resourceType"] == "Patient"]
    # Five patients' records without the Organization and Practitioners they point to.
    resources = population[patients[0]:patients[5]]
    before = copy.deepcopy(resources)
    bundle = transaction_bundle(resources, method="POST")
    Bundle.model_validate(bundle)
    assert resources == before
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    assert all(re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", u) for u in full_urls)
    inside = {f"{r['resourceType']}/{r['id']}" for r in resources}
    for entry in bundle["entry"]:
        assert "id" not in entry["resource"]
        assert entry["request"] == {"method": "POST", "url": entry["resource"]["resourceType"]}
        for ref in references(entry["resource"]):
            assert ref not in inside
            assert ref in full_urls or ref.split("/")[0] in {"Organization", "Practitioner"}
    assert transaction_bundle(resources, method="POST") == bundle  # reproducible fullUrls


def test_bundle_rejects_duplicates_and_resources_without_ids() -> None:
    patient = next(iter(HospitalGenerator().patients(1)))
    with pytest.raises(ValueError, match="Patient/pat-000001 appears twice"):
        transaction_bundle([patient, patient])
    with pytest.raises(ValueError, match="resource 0 needs a resourceType and an id"):
        transaction_bundle([{"resourceType": "Patient"}])
    assert transaction_bundle([]) == {"resourceType": "Bundle", "type": "transaction"}
