"""The FHIRPath subset compiled for R4 SearchParameter expressions (app.search.fhirpath)."""

from __future__ import annotations

from typing import Any

import pytest

from app.definitions.registry import Registry, load_registry
from app.search.fhirpath import (
    Expression,
    FHIRPathCompiler,
    FHIRPathError,
    Item,
    parse_reference,
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def compiler(registry: Registry) -> FHIRPathCompiler:
    return FHIRPathCompiler(registry)


def values(items: list[Item]) -> list[Any]:
    return [value for value, _ in items]


def types(items: list[Item]) -> list[str]:
    return [node.type for _, node in items]


WBC: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs-wbc-001",
    "status": "final",
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "6690-2", "display": "白细胞计数"}],
        "text": "白细胞计数",
    },
    "subject": {"reference": "Patient/p-zhangsan"},
    "effectiveDateTime": "2024-03-05T08:30:00+08:00",
    "valueQuantity": {"value": 10.2, "unit": "10*9/L", "system": "http://unitsofmeasure.org",
                      "code": "10*9/L"},
}


def test_every_r4_search_parameter_expression_compiles(
    registry: Registry, compiler: FHIRPathCompiler
) -> None:
    failures = []
    compiled = 0
    for resource_type, params in registry.search_params.items():
        for code, param in params.items():
            if param.expression is None:
                continue
            try:
                base = compiler.compile(param.expression, resource_type)
            except FHIRPathError as exc:
                failures.append(f"{resource_type}.{code}: {exc}")
                continue
            compiled += 1
            for url, expression in param.components:
                try:
                    compiler.compile_relative(expression, base.output_nodes, resource_type)
                except FHIRPathError as exc:
                    failures.append(f"{resource_type}.{code} component {url}: {exc}")
                else:
                    compiled += 1
    assert not failures, "\n".join(failures)
    assert compiled > 2500  # every parameter of every resource type, components included


def test_every_expression_yields_only_types_the_element_tables_know(
    registry: Registry, compiler: FHIRPathCompiler
) -> None:
    known = set(registry.types) | {"Resource", "DomainResource"}
    unknown = {
        (resource_type, code, node.type)
        for resource_type, params in registry.search_params.items()
        for code, param in params.items()
        if param.expression
        for node in compiler.compile(param.expression, resource_type).output_nodes
        if node.type not in known
    }
    assert not unknown


def test_choice_element_finds_every_typed_key_with_its_type(compiler: FHIRPathCompiler) -> None:
    effective = compiler.compile("Observation.effective", "Observation")
    period = {"start": "2024-03-05T08:00:00+08:00", "end": "2024-03-05T09:00:00+08:00"}

    assert types(effective(WBC)) == ["dateTime"]
    assert types(effective({"resourceType": "Observation", "effectivePeriod": period})) == [
        "Period"
    ]
    assert values(effective({"resourceType": "Observation", "effectiveInstant": "x"})) == ["x"]


def test_of_type_selects_the_typed_key_of_a_choice(compiler: FHIRPathCompiler) -> None:
    quantity = compiler.compile("(Observation.value.ofType(Quantity))", "Observation")
    date_time = compiler.compile("Observation.value.ofType(dateTime)", "Observation")

    assert quantity(WBC) == [(WBC["valueQuantity"], quantity.output_nodes[0])]
    assert types(quantity(WBC)) == ["Quantity"]
    assert date_time(WBC) == []
    assert values(date_time({"resourceType": "Observation",
                             "valueDateTime": "2024-03-05"})) == ["2024-03-05"]


def test_of_type_with_a_system_type_name_matches_the_fhir_primitive(
    compiler: FHIRPathCompiler,
) -> None:
    # Observation-value-date's component is written `value.ofType(DateTime)` in R4.
    root = compiler.resource_node("Observation")
    expression = compiler.compile_relative(
        "value.ofType(DateTime) | value.ofType(Period)", [root], "Observation"
    )
    resource = {"resourceType": "Observation", "valueDateTime": "2024-03-05T08:30:00+08:00"}

    assert types(expression.evaluate([(resource, root)], resource)) == ["dateTime"]


def test_of_type_matches_subtypes_such_as_age_for_quantity(compiler: FHIRPathCompiler) -> None:
    onset = compiler.compile("Condition.onset.ofType(Quantity)", "Condition")
    condition = {"resourceType": "Condition",
                 "onsetAge": {"value": 45, "unit": "岁", "system": "http://unitsofmeasure.org",
                              "code": "a"}}

    assert types(onset(condition)) == ["Age"]


def test_parenthesised_term_followed_by_a_path(compiler: FHIRPathCompiler) -> None:
    expression = compiler.compile(
        "(Observation.value.ofType(string)) | (Observation.value.ofType(CodeableConcept)).text",
        "Observation",
    )
    blood_type = {"resourceType": "Observation",
                  "valueCodeableConcept": {"text": "A型 Rh阳性"}}

    assert expression(blood_type) == [("A型 Rh阳性", expression.output_nodes[-1])]
    assert types(expression(blood_type)) == ["string"]


def test_union_concatenates_both_sides_without_duplicates(compiler: FHIRPathCompiler) -> None:
    expression = compiler.compile("Observation.subject | Observation.subject", "Observation")
    both = compiler.compile("Observation.code | Observation.subject", "Observation")

    assert values(expression(WBC)) == [WBC["subject"]]
    assert types(both(WBC)) == ["CodeableConcept", "Reference"]


@pytest.mark.parametrize(
    ("reference", "kept"),
    [
        ("Patient/p-zhangsan", True),
        ("https://fhir.example-hospital.cn/fhir/Patient/p-zhangsan", True),
        ("Patient/p-zhangsan/_history/3", True),
        ("Group/g-ward-7", False),
        ("Device/dev-sysmex-xn1000", False),
        ("#p1", False),
    ],
)
def test_where_resolve_is_patient_keeps_only_references_to_patients(
    compiler: FHIRPathCompiler, reference: str, kept: bool
) -> None:
    expression = compiler.compile("Observation.subject.where(resolve() is Patient)",
                                  "Observation")
    resource = {"resourceType": "Observation", "subject": {"reference": reference}}

    assert bool(expression(resource)) is kept


def test_where_resolve_uses_reference_type_for_logical_references(
    compiler: FHIRPathCompiler,
) -> None:
    expression = compiler.compile("Observation.subject.where(resolve() is Patient)",
                                  "Observation")
    logical = {"resourceType": "Observation",
               "subject": {"type": "Patient",
                           "identifier": {"system": "urn:oid:2.16.156.10011.1.3",
                                          "value": "11010519491231002X"}}}
    unknown = {"resourceType": "Observation",
               "subject": {"identifier": {"value": "11010519491231002X"}}}

    assert values(expression(logical)) == [logical["subject"]]
    assert expression(unknown) == []


def test_where_with_equality_filters_contact_points_by_system(
    compiler: FHIRPathCompiler,
) -> None:
    phone = compiler.compile("Patient.telecom.where(system='phone')", "Patient")
    patient = {"resourceType": "Patient",
               "telecom": [{"system": "email", "value": "zhangsan@example.cn"},
                           {"system": "phone", "value": "13800138000", "use": "mobile"}]}

    assert values(phone(patient)) == [patient["telecom"][1]]
    assert types(phone(patient)) == ["ContactPoint"]


def test_where_with_combined_criteria_follows_fhirpath_logic(
    compiler: FHIRPathCompiler,
) -> None:
    mobile = compiler.compile(
        "Patient.telecom.where(system = 'phone' and (use = 'mobile' or use = 'temp'))",
        "Patient",
    )
    not_email = compiler.compile("Patient.telecom.where((system = 'email').not())", "Patient")
    patient = {"resourceType": "Patient",
               "telecom": [{"system": "phone", "value": "010-66001234", "use": "work"},
                           {"system": "phone", "value": "13800138000", "use": "mobile"},
                           {"system": "email", "value": "zhangsan@example.cn"}]}

    assert [v["value"] for v in values(mobile(patient))] == ["13800138000"]
    assert [v["value"] for v in values(not_email(patient))] == ["010-66001234", "13800138000"]


def test_resolve_yields_the_referenced_type_and_id(compiler: FHIRPathCompiler) -> None:
    expression = compiler.compile("Observation.subject.resolve()", "Observation")

    assert expression(WBC) == [({"resourceType": "Patient", "id": "p-zhangsan"},
                                compiler.resource_node("Patient"))]


def test_where_on_a_child_code_selects_related_artifacts(compiler: FHIRPathCompiler) -> None:
    expression = compiler.compile(
        "PlanDefinition.relatedArtifact.where(type='depends-on').resource", "PlanDefinition"
    )
    plan = {"resourceType": "PlanDefinition",
            "relatedArtifact": [
                {"type": "citation", "citation": "中国2型糖尿病防治指南（2020年版）"},
                {"type": "depends-on", "resource": "http://example.cn/fhir/Library/dm-logic"},
            ]}

    assert expression(plan) == [("http://example.cn/fhir/Library/dm-logic",
                                 expression.output_nodes[0])]
    assert types(expression(plan)) == ["canonical"]


def test_indexer_takes_the_first_bundle_entry_resource_with_its_concrete_type(
    compiler: FHIRPathCompiler,
) -> None:
    expression = compiler.compile("Bundle.entry[0].resource", "Bundle")
    document = {"resourceType": "Bundle", "type": "document",
                "entry": [{"resource": {"resourceType": "Composition", "id": "discharge-001"}},
                          {"resource": {"resourceType": "Patient", "id": "p-zhangsan"}}]}

    assert types(expression(document)) == ["Composition"]
    assert values(expression(document))[0]["id"] == "discharge-001"


@pytest.mark.parametrize(
    ("deceased", "expected"),
    [
        ({}, False),
        ({"deceasedBoolean": False}, False),
        ({"deceasedBoolean": True}, True),
        ({"deceasedDateTime": "2024-01-08T03:15:00+08:00"}, True),
    ],
)
def test_deceased_expression_is_a_boolean_following_fhirpath_logic(
    compiler: FHIRPathCompiler, deceased: dict[str, Any], expected: bool
) -> None:
    expression = compiler.compile(
        "Patient.deceased.exists() and Patient.deceased != false", "Patient"
    )
    patient = {"resourceType": "Patient", "id": "p-shanxiongxin", **deceased}

    assert expression(patient) == [(expected, compiler.boolean)]
    assert expression.root_keys is None  # yields `false` even when deceased is absent


def test_content_reference_elements_recurse(compiler: FHIRPathCompiler) -> None:
    expression = compiler.compile("Questionnaire.item.item.linkId", "Questionnaire")
    questionnaire = {"resourceType": "Questionnaire",
                     "item": [{"linkId": "1", "text": "既往史", "type": "group",
                               "item": [{"linkId": "1.1", "text": "高血压", "type": "boolean"}]}]}

    assert values(expression(questionnaire)) == ["1.1"]
    assert types(expression(questionnaire)) == ["string"]


def test_percent_resource_reads_the_enclosing_resource_from_a_component(
    compiler: FHIRPathCompiler,
) -> None:
    base = compiler.compile("MolecularSequence.variant", "MolecularSequence")
    chromosome = compiler.compile_relative(
        "%resource.referenceSeq.chromosome", base.output_nodes, "MolecularSequence"
    )
    sequence = {"resourceType": "MolecularSequence", "coordinateSystem": 0,
                "referenceSeq": {"chromosome": {"coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/chromosome-human",
                     "code": "7"}]}},
                "variant": [{"start": 55249070, "end": 55249071}]}

    variants = base(sequence)
    assert types(chromosome.evaluate(variants, sequence)) == ["CodeableConcept"]


def test_items_carry_the_fhir_type_token_conversion_depends_on(
    compiler: FHIRPathCompiler,
) -> None:
    patient = {"resourceType": "Patient", "active": True, "gender": "male",
               "identifier": [{"system": "urn:oid:2.16.156.10011.1.3",
                               "value": "11010519491231002X"}],
               "maritalStatus": {"coding": [{"code": "M"}]}}

    def typed(expression: str) -> list[str]:
        return types(compiler.compile(expression, "Patient")(patient))

    assert typed("Patient.active") == ["boolean"]
    assert typed("Patient.gender") == ["code"]
    assert typed("Patient.identifier") == ["Identifier"]
    assert typed("Patient.maritalStatus") == ["CodeableConcept"]
    assert typed("Patient.id") == []


def test_json_arrays_are_flattened_into_the_collection(compiler: FHIRPathCompiler) -> None:
    given = compiler.compile("Patient.name.given", "Patient")
    patient = {"resourceType": "Patient",
               "name": [{"family": "欧阳", "given": ["娜娜"]},
                        {"use": "nickname", "given": ["Nana", None]}]}

    assert values(given(patient)) == ["娜娜", "Nana"]


def test_root_keys_name_the_top_level_elements_a_path_reads(
    compiler: FHIRPathCompiler,
) -> None:
    value = compiler.compile(
        "(Observation.value.ofType(Quantity)) | (Observation.component.value.ofType(Quantity))",
        "Observation",
    )
    patient = compiler.compile("Observation.subject.where(resolve() is Patient)", "Observation")

    assert value.root_keys == frozenset({"valueQuantity", "component"})
    assert patient.root_keys == frozenset({"subject"})


def test_unknown_element_is_a_compile_error_naming_it(compiler: FHIRPathCompiler) -> None:
    with pytest.raises(FHIRPathError, match="no element 'bloodType'"):
        compiler.compile("Patient.bloodType", "Patient")


def test_unsupported_function_is_a_compile_error(compiler: FHIRPathCompiler) -> None:
    with pytest.raises(FHIRPathError, match=r"unsupported function descendants\(\)"):
        compiler.compile("Patient.descendants()", "Patient")


def test_syntax_error_reports_the_position(compiler: FHIRPathCompiler) -> None:
    with pytest.raises(FHIRPathError) as raised:
        compiler.compile("Patient.name.where(use = 'official'", "Patient")
    assert raised.value.position == len("Patient.name.where(use = 'official'")


def test_expression_type_filter_must_match_the_resource(compiler: FHIRPathCompiler) -> None:
    with pytest.raises(FHIRPathError, match="Patient is not the type"):
        compiler.compile("Patient.name", "Observation")


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("Patient/p-001", ("Patient", "p-001")),
        ("http://127.0.0.1:8080/fhir/Encounter/enc-7/_history/2", ("Encounter", "enc-7")),
        ("urn:uuid:7f3c1d2e-9a4b-4c1d-8e2f-0a1b2c3d4e5f", None),
        ("#contained-med", None),
        ("", None),
    ],
)
def test_parse_reference_reads_type_and_id_of_literal_references(
    reference: str, parsed: tuple[str, str] | None
) -> None:
    assert parse_reference(reference) == parsed


def test_compiled_expression_reports_its_source(compiler: FHIRPathCompiler) -> None:
    expression = compiler.compile("Observation.code", "Observation")

    assert isinstance(expression, Expression)
    assert expression.source == "Observation.code"
    assert "Observation.code" in repr(expression)
