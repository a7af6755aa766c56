"""SMART App Launch 2.2 scopes (app.auth.scopes): grammar, v1/v2, permits, narrow, descriptions."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.auth.scopes import (
    CONTEXTS,
    NON_CLINICAL,
    PERMISSION_ORDER,
    TYPE_NAMES,
    ClinicalScope,
    ScopeSet,
    describe,
    narrow,
    needs_encounter_context,
    needs_patient_context,
    normalise,
    parse_clinical,
    parse_scopes,
    permits,
    type_name,
    wants_fhir_user,
    wants_id_token,
    within,
)
from app.definitions.registry import load_registry

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


def scopes(text: str) -> ScopeSet:
    result = parse_scopes(text)
    assert result.invalid == (), result.invalid
    return result.scopes


def one(text: str) -> ClinicalScope:
    (scope,) = scopes(text).clinical
    return scope


# --- grammar ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "context", "rtype", "perms", "query"), [
    ("patient/Observation.read", "patient", "Observation", "rs", ()),
    ("patient/Observation.write", "patient", "Observation", "cud", ()),
    ("patient/Observation.*", "patient", "Observation", "cruds", ()),
    ("user/*.read", "user", "*", "rs", ()),
    ("system/*.*", "system", "*", "cruds", ()),
    ("patient/Patient.r", "patient", "Patient", "r", ()),
    ("patient/Observation.c", "patient", "Observation", "c", ()),
    ("patient/Observation.u", "patient", "Observation", "u", ()),
    ("patient/Observation.d", "patient", "Observation", "d", ()),
    ("patient/Observation.s", "patient", "Observation", "s", ()),
    ("patient/Observation.rs", "patient", "Observation", "rs", ()),
    ("user/Encounter.cud", "user", "Encounter", "cud", ()),
    ("user/Encounter.cd", "user", "Encounter", "cd", ()),
    ("system/Claim.cruds", "system", "Claim", "cruds", ()),
    ("patient/*.rs", "patient", "*", "rs", ()),
    (f"patient/Observation.rs?category={LAB}", "patient", "Observation", "rs",
     (("category", LAB),)),
    # `|` percent-encoded decodes to the same token separator
    ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
     "observation-category%7Claboratory", "patient", "Observation", "rs", (("category", LAB),)),
    # an encoded `&` belongs to the value; a literal `&` separates parameters
    ("patient/Observation.rs?code=urn:oid:2.16.156.10011.2.3.2%26x|A01&category=exam",
     "patient", "Observation", "rs",
     (("code", "urn:oid:2.16.156.10011.2.3.2&x|A01"), ("category", "exam"))),
    ("patient/Condition.rs?category=http://terminology.hl7.org/CodeSystem/condition-category"
     "|problem-list-item", "patient", "Condition", "rs",
     (("category", "http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item"),)),
    ("user/Practitioner.rs?name=%E5%BC%A0", "user", "Practitioner", "rs", (("name", "张"),)),
    ("patient/Observation.s?subject=Patient/pat-000001", "patient", "Observation", "s",
     (("subject", "Patient/pat-000001"),)),
    # repeated parameter: both restrictions hold (AND), order kept
    ("patient/Observation.rs?category=laboratory&category=vital-signs", "patient", "Observation",
     "rs", (("category", "laboratory"), ("category", "vital-signs"))),
])
def test_valid_clinical_scopes_parse_to_normalised_v2_permissions(
        text: str, context: str, rtype: str, perms: str, query: tuple[tuple[str, str], ...]
) -> None:
    scope = one(text)
    assert (scope.context, scope.resource_type, scope.permissions, scope.query) == (
        context, rtype, perms, query)


@pytest.mark.parametrize("name", NON_CLINICAL)
def test_non_clinical_scopes_are_recognised(name: str) -> None:
    result = parse_scopes(name)
    assert result.invalid == ()
    assert result.scopes.other == frozenset({name})
    assert result.scopes.clinical == ()


@pytest.mark.parametrize(("text", "reason"), [
    ("Patient/Observation.rs", "unknown context"),
    ("PATIENT/Observation.rs", "unknown context"),
    ("*/Observation.rs", "unknown context"),
    ("practitioner/Observation.rs", "unknown context"),
    ("patient/observation.rs", "not an R4 resource type"),
    ("patient/Foo.rs", "not an R4 resource type"),
    ("patient/Resource.rs", "not an R4 resource type"),
    ("patient/DomainResource.read", "not an R4 resource type"),
    ("patient/.rs", "not an R4 resource type"),
    ("patient/Observation.RS", "invalid permissions"),
    ("patient/Observation.Read", "invalid permissions"),
    ("patient/Observation.READ", "invalid permissions"),
    ("patient/Observation.sr", "in that order"),
    ("patient/Observation.rr", "in that order"),
    ("patient/Observation.dc", "in that order"),
    ("patient/Observation.scrud", "in that order"),
    ("patient/Observation.x", "invalid permissions"),
    ("patient/Observation.**", "invalid permissions"),
    ("patient/Observation.readrs", "invalid permissions"),
    ("patient/Observation.rsread", "invalid permissions"),
    ("patient/Observation.read,write", "invalid permissions"),
    ("patient/Observation.", "no permissions"),
    ("patient/Observation", "unknown scope"),
    ("patient", "unknown scope"),
    ("Observation.read", "unknown scope"),
    ("patient/Observation.read?category=laboratory", "needs v2 permissions"),
    ("patient/Observation.*?category=laboratory", "needs v2 permissions"),
    ("patient/*.rs?category=laboratory", "concrete resource type"),
    ("patient/Observation.rs?", "empty query"),
    ("patient/Observation.rs?category", "name=value"),
    ("patient/Observation.rs?category=", "name=value"),
    ("patient/Observation.rs?=laboratory", "name=value"),
    ("patient/Observation.rs?category=laboratory&&code=1", "name=value"),
    ("patient/Observation.rs?colour=red", "not a search parameter of Observation"),
    ("patient/Observation.rs?date=ge2026-01-01", "date parameter"),
    ("patient/Observation.rs?value-quantity=5.4", "quantity parameter"),
    ("patient/Observation.rs?subject.name=%E5%BC%A0", "only plain search parameter names"),
    ("patient/Observation.rs?code:not=1234-5", "only plain search parameter names"),
    ("patient/Patient.rs?_has:Observation:subject:code=1234-5",
     "only plain search parameter names"),
    ("patient/Observation.rs?code=%zz", "malformed percent-encoding"),
    ("patient/Observation.rs?code=%FF", "not UTF-8"),
    ("patient/Observation.rs?category=a|b|c", "token"),
    ("patient/Observation.rs?code=张", "RFC 6749"),
    ('patient/Observation.rs?code="1234-5"', "RFC 6749"),
    ("patient/Observation.rs?code=a\\,b", "RFC 6749"),
    ("patient/Observation.rs\t", "RFC 6749"),
    ("OPENID", "unknown scope"),
    ("openID", "unknown scope"),
    ("fhiruser", "unknown scope"),
    ("launch/Patient", "unknown scope"),
    ("launch/practitioner", "unknown scope"),
    ("offline", "unknown scope"),
    ("patient/Observation.rs#x", "invalid permissions"),
])
def test_invalid_scopes_are_reported_with_a_reason_and_not_granted(text: str, reason: str) -> None:
    result = parse_scopes(f"openid {text} patient/Patient.rs")
    assert [i.scope for i in result.invalid] == [text]
    assert reason in result.invalid[0].reason
    assert result.scopes.to_string() == "openid patient/Patient.rs"


def test_parse_clinical_raises_value_error_for_library_callers() -> None:
    with pytest.raises(ValueError, match="in that order"):
        parse_clinical("patient/Observation.sr")


def test_empty_and_oddly_spaced_scope_strings() -> None:
    assert parse_scopes("").scopes == ScopeSet()
    assert parse_scopes(None).scopes == ScopeSet()
    assert parse_scopes("   ").scopes == ScopeSet()
    assert scopes("  openid   patient/Patient.rs ").to_string() == "openid patient/Patient.rs"


def test_duplicate_scopes_collapse_and_duplicate_invalid_ones_are_reported_once() -> None:
    result = parse_scopes("openid openid patient/Observation.rs patient/Observation.rs "
                          "patient/Observation.sr patient/Observation.sr")
    assert result.scopes.to_string() == "openid patient/Observation.rs"
    assert [i.scope for i in result.invalid] == ["patient/Observation.sr"]


def test_v1_and_v2_scopes_may_be_mixed_in_one_request() -> None:
    s = scopes("patient/Patient.read patient/Observation.rs user/Encounter.write")
    assert [str(c) for c in s.clinical] == [
        "patient/Observation.rs", "patient/Patient.read", "user/Encounter.write"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("patient/user/system.Observation*?&=%|rscud :\\张"
                                             "readwrite")), max_size=60) | st.text(max_size=40))
def test_parser_never_raises_and_accounts_for_every_token(text: str) -> None:
    result = parse_scopes(text)
    tokens = {t for t in text.split(" ") if t}
    accepted = set(result.scopes.tokens())
    rejected = {i.scope for i in result.invalid}
    assert accepted.isdisjoint(rejected)
    assert rejected <= tokens
    # every accepted token was asked for (possibly re-encoded: then it parses to the same scope)
    for token in tokens - rejected:
        assert token in NON_CLINICAL or parse_clinical(token) in result.scopes.clinical


# --- v1 / v2 ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("v1", "v2"), [
    ("patient/Observation.read", "patient/Observation.rs"),
    ("user/*.write", "user/*.cud"),
    ("system/Patient.*", "system/Patient.cruds"),
])
def test_v1_scopes_equal_their_v2_form(v1: str, v2: str) -> None:
    old, new = one(v1), one(v2)
    assert old.v2 == v2
    assert str(old) == v1  # echoed in the syntax requested
    assert old.normalised() == new
    assert normalise(scopes(v1)) == scopes(v2)
    for context, interaction in itertools.product(CONTEXTS, PERMISSION_ORDER):
        for rtype in ("Observation", "Patient"):
            assert bool(permits(scopes(v1), context, rtype, interaction)) == bool(
                permits(scopes(v2), context, rtype, interaction))


def test_v2_letters_that_are_not_a_v1_set_stay_v2_even_when_flagged_v1() -> None:
    assert str(ClinicalScope("patient", "Observation", "r", (), v1=True)) == "patient/Observation.r"


def test_building_a_scope_with_bad_permissions_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not a clinical scope"):
        ClinicalScope("patient", "Observation", "sr")
    with pytest.raises(ValueError, match="not a clinical scope"):
        ClinicalScope("patient", "Observation", "")
    with pytest.raises(ValueError, match="not a clinical scope"):
        ClinicalScope("practitioner", "Observation", "rs")  # type: ignore[arg-type]


# --- permits ----------------------------------------------------------------------------------

def test_patient_wildcard_permits_read_and_search_of_every_type_in_patient_context_only() -> None:
    s = scopes("patient/*.rs")
    assert permits(s, "patient", "Observation", "r") == s.clinical
    assert permits(s, "patient", "Condition", "s") == s.clinical
    assert permits(s, "patient", "Observation", "c") == ()
    assert permits(s, "patient", "Observation", "d") == ()
    assert permits(s, "user", "Observation", "r") == ()
    assert permits(s, "system", "Observation", "r") == ()


def test_user_scopes_permit_their_interactions() -> None:
    s = scopes("user/Encounter.cud user/Patient.read")
    for i in "cud":
        assert [str(x) for x in permits(s, "user", "Encounter", i)] == ["user/Encounter.cud"]
    assert permits(s, "user", "Encounter", "r") == ()
    assert [str(x) for x in permits(s, "user", "Patient", "s")] == ["user/Patient.read"]
    assert permits(s, "user", "Observation", "r") == ()


def test_system_wildcard_permits_everything_in_system_context() -> None:
    s = scopes("system/*.*")
    for rtype in ("Patient", "Claim", "Coverage", "ExplanationOfBenefit"):
        for i in PERMISSION_ORDER:
            assert permits(s, "system", rtype, i) == s.clinical
    assert permits(s, "patient", "Patient", "r") == ()


def test_permits_returns_every_matching_scope_with_its_query_for_the_caller_to_or() -> None:
    s = scopes(f"patient/Observation.rs?category={LAB} patient/Observation.rs?category={VITALS} "
               "patient/Condition.rs patient/*.r")
    matches = permits(s, "patient", "Observation", "s")
    assert sorted(m.query for m in matches) == [(("category", LAB),), (("category", VITALS),)]
    read = permits(s, "patient", "Observation", "r")
    assert {str(m) for m in read} == {"patient/*.r", f"patient/Observation.rs?category={LAB}",
                                      f"patient/Observation.rs?category={VITALS}"}
    assert any(not m.query for m in read)  # the unrestricted one absorbs the rest


def test_permits_accepts_a_plain_iterable_and_refuses_unknown_interactions() -> None:
    s = scopes("patient/Patient.rs")
    assert permits(list(s.clinical), "patient", "Patient", "r") == s.clinical
    with pytest.raises(ValueError, match="interaction"):
        permits(s, "patient", "Patient", "read")
    with pytest.raises(ValueError, match="interaction"):
        permits(s, "patient", "Patient", "rs")
    with pytest.raises(ValueError, match="context"):
        permits(s, "practitioner", "Patient", "r")


# --- narrow -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("requested", "ceiling", "granted"), [
    ("patient/*.rs", "patient/Observation.read", "patient/Observation.rs"),
    ("patient/Observation.cruds", "patient/Observation.rs", "patient/Observation.rs"),
    ("patient/Observation.read", "patient/*.*", "patient/Observation.read"),
    ("patient/*.read", "patient/Observation.read", "patient/Observation.read"),
    ("patient/Observation.write", "patient/Observation.rs", ""),
    # a v1 request is answered in v1 while the result can be written that way
    ("patient/Observation.*", "patient/Observation.rs", "patient/Observation.read"),
    ("patient/Observation.*", "patient/Observation.rd", "patient/Observation.rd"),
    ("patient/Observation.read", "patient/Observation.r", "patient/Observation.r"),
    ("patient/Observation.rs", "user/Observation.rs", ""),
    ("patient/Observation.rs", "patient/Condition.rs", ""),
    ("system/*.rs", "system/Patient.rs system/Coverage.r", "system/Coverage.r system/Patient.rs"),
    # granular requests are kept when the ceiling allows the whole type/permission
    (f"patient/Observation.rs?category={LAB}", "patient/Observation.read",
     f"patient/Observation.rs?category={LAB}"),
    (f"patient/Observation.rs?category={LAB}", "patient/*.r",
     f"patient/Observation.r?category={LAB}"),
    (f"patient/Observation.rs?category={LAB}", f"patient/Observation.rs?category={VITALS}", ""),
    (f"patient/Observation.rs?category={LAB}", f"patient/Observation.rs?category={LAB}",
     f"patient/Observation.rs?category={LAB}"),
    # the user ticks only a category of a type-level request: it becomes v2 granular
    ("patient/Observation.read", f"patient/Observation.rs?category={LAB}",
     f"patient/Observation.rs?category={LAB}"),
    ("openid fhirUser offline_access launch/patient patient/Patient.rs",
     "openid launch/patient patient/*.rs", "openid launch/patient patient/Patient.rs"),
])
def test_narrow_grants_the_intersection(requested: str, ceiling: str, granted: str) -> None:
    assert narrow(scopes(requested), scopes(ceiling)).to_string() == granted


def test_narrow_keeps_only_the_widest_result_when_several_ceiling_scopes_match() -> None:
    got = narrow(scopes("patient/*.rs"), scopes("patient/*.rs patient/Observation.rs patient/*.r"))
    assert got.to_string() == "patient/*.rs"


def test_refresh_narrowing_never_widens_the_original_grant() -> None:
    original = scopes(f"openid offline_access patient/Observation.rs?category={LAB} "
                      "patient/Patient.read")
    asked = scopes("openid offline_access launch/patient patient/*.cruds patient/Condition.rs")
    got = narrow(asked, original)
    assert got.to_string() == (f"openid offline_access patient/Observation.rs?category={LAB} "
                               "patient/Patient.rs")
    assert within(got, original)
    assert narrow(original, original) == original


def test_within_compares_permissions_not_spelling() -> None:
    assert within(scopes("patient/Observation.rs"), scopes("patient/Observation.read"))
    assert within(scopes("patient/Observation.r patient/Observation.s"),
                  scopes("patient/*.rs"))
    assert within(scopes("patient/Observation.rs"),
                  scopes("patient/Observation.r patient/Observation.s"))
    assert within(scopes(f"patient/Observation.rs?category={LAB}"), scopes("patient/*.rs"))
    assert not within(scopes("patient/Observation.rs"),
                      scopes(f"patient/Observation.rs?category={LAB}"))
    assert not within(scopes("patient/Observation.rs"), scopes("user/Observation.rs"))
    assert not within(scopes("openid"), scopes("patient/*.rs"))


# A small permission model, independent of the module's own subset logic: a scope allows an
# (context, type, interaction) on a resource when every one of its query pairs holds for it.
TYPES = ("Observation", "Condition", "Patient")
PAIRS = (("category", "laboratory"), ("category", "vital-signs"),
         ("code", "urn:oid:2.16.156.10011.2.3.2&x=1|A01 0%"))
RESOURCES = [frozenset(c) for n in range(len(PAIRS) + 1) for c in itertools.combinations(PAIRS, n)]


def allowed(s: ScopeSet) -> set[tuple[str, str, str, frozenset[tuple[str, str]]]]:
    return {(ctx, t, p, res)
            for ctx, t, p, res in itertools.product(CONTEXTS, TYPES, PERMISSION_ORDER, RESOURCES)
            if any(set(c.query) <= res for c in permits(s, ctx, t, p))}


@st.composite
def clinical_scopes(draw: st.DrawFn) -> ClinicalScope:
    rtype = draw(st.sampled_from(("*", *TYPES)))
    letters = draw(st.sets(st.sampled_from(PERMISSION_ORDER), min_size=1))
    perms = "".join(p for p in PERMISSION_ORDER if p in letters)
    query: tuple[tuple[str, str], ...] = ()
    if rtype in ("Observation", "Condition"):
        query = tuple(draw(st.lists(st.sampled_from(PAIRS), max_size=2, unique=True)))
    return ClinicalScope(draw(st.sampled_from(CONTEXTS)), rtype, perms, query,
                         v1=draw(st.booleans()))


scope_sets = st.builds(ScopeSet.of, st.lists(clinical_scopes(), max_size=5),
                       st.sets(st.sampled_from(NON_CLINICAL)))


@settings(max_examples=300, deadline=None)
@given(scope_sets, scope_sets)
def test_narrow_never_widens_either_side(a: ScopeSet, b: ScopeSet) -> None:
    got = narrow(a, b)
    assert allowed(got) <= allowed(a)
    assert allowed(got) <= allowed(b)
    assert got.other <= a.other & b.other
    assert within(got, a) and within(got, b)


@settings(max_examples=200, deadline=None)
@given(scope_sets)
def test_narrow_by_itself_or_by_everything_keeps_every_permission(a: ScopeSet) -> None:
    everything = scopes(" ".join(NON_CLINICAL) + " patient/*.cruds user/*.cruds system/*.cruds")
    assert allowed(narrow(a, a)) == allowed(a)
    assert narrow(a, everything) == a


@settings(max_examples=200, deadline=None)
@given(scope_sets, scope_sets)
def test_narrowing_twice_equals_narrowing_once(a: ScopeSet, b: ScopeSet) -> None:
    once = narrow(a, b)
    assert allowed(narrow(once, b)) == allowed(once)


# --- canonical string -------------------------------------------------------------------------

def test_to_string_writes_a_canonical_order() -> None:
    s = scopes("system/Patient.r patient/Observation.rs openid user/*.read launch/patient "
               "patient/*.cruds offline_access fhirUser launch")
    assert s.to_string() == ("openid fhirUser launch launch/patient offline_access "
                             "patient/*.cruds patient/Observation.rs user/*.read system/Patient.r")


def test_query_values_are_written_percent_encoded_only_where_needed() -> None:
    s = scopes("patient/Observation.rs?code=urn:oid:2.16.156.10011.2.3.2%26x|A01 "
               "user/Practitioner.rs?name=%E5%BC%A0")
    assert s.to_string() == ("patient/Observation.rs?code=urn:oid:2.16.156.10011.2.3.2%26x|A01 "
                             "user/Practitioner.rs?name=%E5%BC%A0")


@settings(max_examples=300, deadline=None)
@given(scope_sets, st.randoms())
def test_to_string_round_trips_through_parse_in_any_order(s: ScopeSet, rnd: object) -> None:
    text = s.to_string()
    assert parse_scopes(text).scopes == s
    tokens = text.split(" ")
    rnd.shuffle(tokens)  # type: ignore[attr-defined]
    assert parse_scopes(" ".join(tokens)).scopes.to_string() == text


# --- context helpers --------------------------------------------------------------------------

def test_patient_context_is_needed_for_patient_scopes_or_launch_patient() -> None:
    assert needs_patient_context(scopes("patient/Observation.rs"))
    assert needs_patient_context(scopes("launch/patient openid"))
    assert not needs_patient_context(scopes("user/*.rs launch openid fhirUser"))
    assert not needs_patient_context(scopes("system/*.rs"))
    assert needs_encounter_context(scopes("launch/encounter"))
    assert not needs_encounter_context(scopes("launch"))


def test_openid_asks_for_an_id_token_and_fhir_user_for_its_claim() -> None:
    assert wants_id_token(scopes("openid")) and not wants_fhir_user(scopes("openid"))
    assert wants_id_token(scopes("openid fhirUser")) and wants_fhir_user(scopes("openid fhirUser"))
    assert not wants_id_token(scopes("fhirUser profile")) and not wants_fhir_user(
        scopes("fhirUser profile"))


# --- descriptions -----------------------------------------------------------------------------

@pytest.mark.parametrize(("scope", "zh", "en"), [
    ("patient/Observation.rs", "读取并搜索您的检验检查结果 (Observation)",
     "Read and search your observations (Observation)"),
    ("patient/Observation.read", "读取并搜索您的检验检查结果 (Observation)",
     "Read and search your observations (Observation)"),
    ("patient/Patient.r", "读取您的基本信息 (Patient)", "Read your basic information (Patient)"),
    ("patient/MedicationRequest.cruds", "创建、读取、修改、删除并搜索您的处方 (MedicationRequest)",
     "Create, read, update, delete and search your prescriptions (MedicationRequest)"),
    ("user/Encounter.write", "创建、修改并删除您有权查看的就诊记录 (Encounter)",
     "Create, update and delete the visits you have access to (Encounter)"),
    ("system/Coverage.rs", "读取并搜索系统中所有医保 (Coverage)",
     "Read and search all insurance coverage in the system (Coverage)"),
    ("patient/*.rs", "读取并搜索您的全部健康记录",
     "Read and search your health records of every type"),
    (f"patient/Observation.rs?category={LAB}",
     "读取并搜索您的检验检查结果 (Observation)（仅限类别：检验）",
     "Read and search your observations (Observation) (only category: laboratory)"),
    ("patient/Condition.rs?category=http://terminology.hl7.org/CodeSystem/condition-category"
     "|encounter-diagnosis", "读取并搜索您的诊断 (Condition)（仅限类别：就诊诊断）",
     "Read and search your conditions and diagnoses (Condition) (only category: encounter "
     "diagnoses)"),
    ("patient/Observation.rs?code=http://loinc.org|8867-4",
     "读取并搜索您的检验检查结果 (Observation)（仅限code=http://loinc.org|8867-4）",
     "Read and search your observations (Observation) (only code=http://loinc.org|8867-4)"),
    ("patient/VisionPrescription.r", "读取您的VisionPrescription 记录 (VisionPrescription)",
     "Read your vision prescription records (VisionPrescription)"),
    ("openid", "确认您的身份", "Confirm your identity"),
    ("offline_access", "在您退出后仍可继续访问（直到您撤销授权）",
     "Keep access after you sign out (until you revoke it)"),
    ("patient/Observation.sr", "未知权限 patient/Observation.sr",
     "Unknown permission patient/Observation.sr"),
])
def test_descriptions_in_chinese_and_english(scope: str, zh: str, en: str) -> None:
    assert describe(scope, "zh") == zh
    assert describe(scope, "en") == en
    if not scope.startswith("patient/Observation.sr") and "/" in scope and "." in scope:
        assert describe(parse_clinical(scope), "zh") == zh


def test_every_non_clinical_scope_has_a_description_in_both_languages() -> None:
    for name in NON_CLINICAL:
        zh, en = describe(name, "zh"), describe(name, "en")
        assert zh and en and zh != en and "未知" not in zh


def test_at_least_thirty_common_types_have_chinese_names_and_all_are_r4_types() -> None:
    registry = load_registry()
    assert len(TYPE_NAMES) >= 30
    assert all(registry.is_resource_type(t) for t in TYPE_NAMES)
    expected = {"Patient": "基本信息", "Observation": "检验检查结果", "Condition": "诊断",
                "MedicationRequest": "处方", "Encounter": "就诊记录",
                "DiagnosticReport": "检验检查报告", "AllergyIntolerance": "过敏",
                "Procedure": "手术操作", "Immunization": "预防接种", "Coverage": "医保",
                "Claim": "费用结算", "DocumentReference": "病历文书", "Composition": "病历"}
    for rtype, name in expected.items():
        assert type_name(rtype, "zh") == name
    assert type_name("Observation", "en") == "observations"


def test_every_r4_type_gets_some_description() -> None:
    for rtype in load_registry().resource_types:
        assert rtype in describe(f"user/{rtype}.rs", "zh")
        assert rtype in describe(f"user/{rtype}.rs", "en")
