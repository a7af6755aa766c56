"""`_summary` and `_elements` filtering (app/fhir/summary.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.definitions.registry import Registry, load_registry
from app.fhir.summary import SUBSETTED, apply_elements, apply_summary, is_subsetted
from app.fhir.validation import validate_resource

ID_CARD = "urn:oid:2.16.156.10011.1.3"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def zhang_san() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "zhangsan-001",
        "meta": {"versionId": "3", "lastUpdated": "2026-11-20T08:00:00+08:00",
                 "tag": [{"system": "http://example.cn/fhir/CodeSystem/source", "code": "HIS"}]},
        "text": {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml">张三，男，1949-12-31</div>'},
        "extension": [{"url": "http://example.cn/fhir/StructureDefinition/ethnicity",
                       "valueCoding": {"system": "urn:oid:2.16.156.10011.2.3.3.3",
                                       "code": "01", "display": "汉族"}}],
        "identifier": [{"use": "official", "system": ID_CARD, "value": "11010519491231002X",
                        "extension": [{"url": "http://example.cn/fhir/StructureDefinition/"
                                              "verified", "valueBoolean": True}]}],
        "active": True,
        "name": [{"use": "official", "text": "张三", "family": "张", "given": ["三", None],
                  "_given": [None, {"extension": [{
                      "url": "http://example.cn/fhir/StructureDefinition/pinyin",
                      "valueString": "San"}]}]}],
        "gender": "male",
        "birthDate": "1949-12-31",
        "_birthDate": {"extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
            "valueDateTime": "1949-12-31T08:00:00+08:00"}]},
        "maritalStatus": {"text": "已婚"},
        "contact": [{"name": {"text": "张小红"}, "relationship": [{"text": "女儿"}]}],
        "communication": [{"language": {"text": "普通话"}, "preferred": True}],
    }


def blood_pressure() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "bp-20261120",
        "text": {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml">血压 138/86 mmHg</div>'},
        "status": "final",
        "category": [{"text": "生命体征"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "血压"},
        "subject": {"reference": "Patient/zhangsan-001"},
        "effectiveDateTime": "2026-11-20T09:05:00+08:00",
        "interpretation": [{"text": "偏高"}],
        "note": [{"text": "患者自诉晨起未服药"}],
        "component": [
            {"code": {"text": "收缩压"},
             "valueQuantity": {"value": 138, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
             "interpretation": [{"text": "偏高"}],
             "referenceRange": [{"high": {"value": 120, "unit": "mmHg"}}]},
            {"code": {"text": "舒张压"},
             "valueQuantity": {"value": 86, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
        ],
    }


def subsetted_tags(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in resource["meta"]["tag"] if t["code"] == "SUBSETTED"]


# -- _summary=true ---------------------------------------------------------------------------


def test_summary_true_keeps_only_summary_elements(registry: Registry) -> None:
    out = apply_summary(zhang_san(), "true", registry)
    assert set(out) == {"resourceType", "id", "meta", "identifier", "active", "name",
                        "gender", "birthDate"}


def test_summary_true_filters_inside_complex_types(registry: Registry) -> None:
    out = apply_summary(zhang_san(), "true", registry)
    # Identifier.extension and the _given / _birthDate extensions are not summary elements.
    assert out["identifier"] == [{"use": "official", "system": ID_CARD,
                                  "value": "11010519491231002X"}]
    assert out["name"] == [{"use": "official", "text": "张三", "family": "张", "given": ["三"]}]
    assert "_birthDate" not in out


def test_summary_true_filters_backbone_elements_by_their_own_flags(registry: Registry) -> None:
    out = apply_summary(blood_pressure(), "true", registry)
    assert "note" not in out and "interpretation" not in out and "text" not in out
    assert out["component"][0] == {
        "code": {"text": "收缩压"},
        "valueQuantity": {"value": 138, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}


def test_summary_true_summarises_nested_resources_as_their_own_type(
        registry: Registry) -> None:
    bundle = {"resourceType": "Bundle", "id": "doc-1", "type": "collection",
              "entry": [{"fullUrl": "http://example.cn/fhir/Patient/zhangsan-001",
                         "resource": zhang_san()}]}
    out = apply_summary(bundle, "true", registry)
    patient = out["entry"][0]["resource"]
    assert "text" not in patient and "contact" not in patient
    assert patient["birthDate"] == "1949-12-31"


def test_summary_result_is_still_valid_r4(registry: Registry) -> None:
    for resource in (zhang_san(), blood_pressure()):
        for mode in ("true", "text", "data"):
            out = apply_summary(resource, mode, registry)
            assert validate_resource(out, registry) == [], (resource["resourceType"], mode)


# -- _summary=text / data / false ------------------------------------------------------------


def test_summary_text_keeps_text_id_meta_and_mandatory_elements(registry: Registry) -> None:
    out = apply_summary(blood_pressure(), "text", registry)
    assert set(out) == {"resourceType", "id", "meta", "text", "status", "code"}
    assert out["code"] == blood_pressure()["code"]


def test_summary_data_removes_only_the_narrative(registry: Registry) -> None:
    source = zhang_san()
    out = apply_summary(source, "data", registry)
    assert "text" not in out
    source.pop("text")
    out["meta"]["tag"] = [t for t in out["meta"]["tag"] if t["code"] != "SUBSETTED"]
    assert out == source


def test_summary_false_returns_the_resource_untagged(registry: Registry) -> None:
    source = zhang_san()
    assert apply_summary(source, "false", registry) is source
    assert not is_subsetted(source)


@pytest.mark.parametrize("mode", ["true", "text", "data"])
def test_every_subset_is_tagged_subsetted_once(mode: str, registry: Registry) -> None:
    out = apply_summary(zhang_san(), mode, registry)
    assert subsetted_tags(out) == [SUBSETTED]
    # The existing tag and version survive: they are summary elements of Meta.
    assert out["meta"]["versionId"] == "3"
    assert {"system": "http://example.cn/fhir/CodeSystem/source", "code": "HIS"} in \
        out["meta"]["tag"]
    again = apply_summary(out, mode, registry)
    assert subsetted_tags(again) == [SUBSETTED]


def test_subset_tag_is_added_when_the_resource_has_no_meta(registry: Registry) -> None:
    source = blood_pressure()
    out = apply_summary(source, "true", registry)
    assert list(out)[:3] == ["resourceType", "id", "meta"]
    assert "meta" not in source


def test_filtering_never_changes_the_stored_resource(registry: Registry) -> None:
    source = zhang_san()
    before = copy.deepcopy(source)
    for mode in ("true", "text", "data"):
        apply_summary(source, mode, registry)
    apply_elements(source, ["name"], registry)
    assert source == before


@pytest.mark.parametrize("mode", ["count", "TRUE", ""])
def test_summary_modes_that_select_no_content_are_refused(mode: str,
                                                          registry: Registry) -> None:
    with pytest.raises(ValueError, match="_summary"):
        apply_summary(zhang_san(), mode, registry)


# -- _elements -------------------------------------------------------------------------------


def test_elements_keeps_requested_mandatory_and_modifier_elements(registry: Registry) -> None:
    out, unknown = apply_elements(zhang_san(), ["birthDate", "name"], registry)
    assert unknown == []
    # active is a modifier element of Patient, so it stays even though it was not asked for.
    assert set(out) == {"resourceType", "id", "meta", "name", "birthDate", "_birthDate",
                        "active"}
    assert subsetted_tags(out) == [SUBSETTED]


def test_elements_always_keeps_mandatory_elements(registry: Registry) -> None:
    out, _ = apply_elements(blood_pressure(), ["subject"], registry)
    assert set(out) == {"resourceType", "id", "meta", "status", "code", "subject"}


def test_elements_choice_name_selects_every_type_variant(registry: Registry) -> None:
    observation = {"resourceType": "Observation", "status": "final",
                   "code": {"text": "白细胞计数"},
                   "valueQuantity": {"value": 6.5, "unit": "10^9/L", "system": UCUM,
                                     "code": "10*9/L"},
                   "effectiveDateTime": "2026-11-20T08:30:00+08:00"}
    out, unknown = apply_elements(observation, ["value"], registry)
    assert unknown == [] and "valueQuantity" in out and "effectiveDateTime" not in out
    out, unknown = apply_elements(observation, ["effectiveDateTime"], registry)
    assert unknown == [] and "effectiveDateTime" in out and "valueQuantity" not in out


def test_elements_reports_unknown_names_for_strict_handling(registry: Registry) -> None:
    _, unknown = apply_elements(zhang_san(), ["name", "birthdate", "name.family", "Foo.bar",
                                              " "], registry)
    assert unknown == ["birthdate", "name.family", "Foo.bar"]


def test_elements_names_scoped_to_another_type_are_neither_used_nor_unknown(
        registry: Registry) -> None:
    out, unknown = apply_elements(zhang_san(), ["Observation.value", "Patient.gender"],
                                  registry)
    assert unknown == []
    assert "gender" in out and "valueQuantity" not in out


def test_elements_result_is_valid_r4(registry: Registry) -> None:
    out, _ = apply_elements(blood_pressure(), ["component"], registry)
    assert validate_resource(out, registry) == []
