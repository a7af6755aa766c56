"""SMART App Launch 2.2 scopes: v1, v2 and granular (v2 with a query).

Spec: hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html.

Grammar (§ "SMART's scopes are used to request access…"):

    clinical  = context "/" (ResourceType | "*") "." perms [ "?" query ]
    context   = "patient" | "user" | "system"
    perms     = "read" | "write" | "*"                  ; v1
              | c? r? u? d? s?  (non-empty, in that order) ; v2
    query     = name "=" value *( "&" name "=" value )   ; v2 only, concrete type only

plus the non-clinical scopes `openid fhirUser profile launch launch/patient launch/encounter
offline_access online_access`. v1 → v2: `read` = `rs`, `write` = `cud`, `*` = `cruds`.

Pure: no I/O. Client input never raises; what cannot be parsed or supported is reported in
`ParseResult.invalid` with a reason and is simply not granted (RFC 6749 §3.3 lets the server
narrow).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Literal
from urllib.parse import quote, unquote

from app.definitions.registry import Registry, load_registry
from app.search.query import ParseContext, parse_search

Context = Literal["patient", "user", "system"]
Interaction = Literal["c", "r", "u", "d", "s"]
Lang = Literal["zh", "en"]

CONTEXTS: tuple[Context, ...] = ("patient", "user", "system")
PERMISSION_ORDER = "cruds"
V1_TO_V2: dict[str, str] = {"read": "rs", "write": "cud", "*": "cruds"}
V2_TO_V1: dict[str, str] = {v: k for k, v in V1_TO_V2.items()}
# Non-clinical scopes, in the order `to_string` writes them.
NON_CLINICAL: tuple[str, ...] = (
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
    "offline_access", "online_access",
)
# Granular restrictions are evaluated in memory too (matcher.py), so only these parameter kinds,
# without modifiers or chains — what SMART 2.2 and US Core use (`category=system|code`).
QUERY_PARAM_TYPES = frozenset({"token", "reference", "uri", "string"})

_CLINICAL_RE = re.compile(
    r"(?P<context>[^/]*)/(?P<type>[^.?]*)\.(?P<perms>[^?]*)(?:\?(?P<query>.*))?", re.DOTALL)
_V2_PERMS_RE = re.compile(r"c?r?u?d?s?")
_PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Kept literal when writing a query value: readable (`system|code`, URLs), legal in a scope token.
_QUERY_SAFE = "|:/,.-_~!$'()*+;@"


@dataclass(frozen=True, slots=True)
class ClinicalScope:
    """One resource scope. `permissions` is always the normalised v2 letter set."""

    context: Context
    resource_type: str  # an R4 resource type or "*"
    permissions: str  # non-empty subset of "cruds", in that order
    query: tuple[tuple[str, str], ...] = ()  # granular restriction, URL-decoded, as written
    v1: bool = False  # requested with v1 syntax: written back that way while it can be

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS or not self.permissions or not _V2_PERMS_RE.fullmatch(
                self.permissions):
            raise ValueError(f"not a clinical scope: context {self.context!r}, "
                             f"permissions {self.permissions!r}")
        if self.v1 and (self.query or self.permissions not in V2_TO_V1):
            object.__setattr__(self, "v1", False)  # not expressible in v1 any more

    @property
    def v2(self) -> str:
        """The normalised v2 form (`patient/Observation.read` → `patient/Observation.rs`)."""
        text = f"{self.context}/{self.resource_type}.{self.permissions}"
        if self.query:
            text += "?" + "&".join(f"{quote(n, safe='')}={quote(v, safe=_QUERY_SAFE)}"
                                   for n, v in self.query)
        return text

    def __str__(self) -> str:
        if self.v1 and not self.query and self.permissions in V2_TO_V1:
            return f"{self.context}/{self.resource_type}.{V2_TO_V1[self.permissions]}"
        return self.v2

    def normalised(self) -> ClinicalScope:
        """The same permission in v2 syntax."""
        return ClinicalScope(self.context, self.resource_type, self.permissions, self.query)

    def allows(self, context: str, resource_type: str, interaction: str) -> bool:
        return (self.context == context and self.resource_type in (resource_type, "*")
                and interaction in self.permissions)

    def covers(self, other: ClinicalScope) -> bool:
        """True when every access `other` grants is also granted by this scope alone."""
        return (self.context == other.context
                and self.resource_type in (other.resource_type, "*")
                and set(other.permissions) <= set(self.permissions)
                and set(self.query) <= set(other.query))  # more query pairs = fewer resources


def _scope_key(s: ClinicalScope) -> tuple[object, ...]:
    return (CONTEXTS.index(s.context), s.resource_type != "*", s.resource_type,
            -len(s.permissions), s.permissions, s.v1, s.query)


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """Parsed, de-duplicated scopes. Build with `ScopeSet.of` or `parse_scopes`."""

    clinical: tuple[ClinicalScope, ...] = ()
    other: frozenset[str] = field(default_factory=frozenset)  # members of NON_CLINICAL

    @classmethod
    def of(cls, clinical: Iterable[ClinicalScope] = (), other: Iterable[str] = ()) -> ScopeSet:
        unknown = set(other) - set(NON_CLINICAL)
        if unknown:
            raise ValueError(f"not SMART non-clinical scopes: {sorted(unknown)}")
        seen: dict[str, ClinicalScope] = {}
        for s in clinical:
            seen.setdefault(str(s), s)
        return cls(tuple(sorted(seen.values(), key=_scope_key)), frozenset(other))

    def __contains__(self, name: object) -> bool:
        return name in self.other or any(str(s) == name for s in self.clinical)

    def tokens(self) -> list[str]:
        """Every scope as text, in canonical order: non-clinical first, then clinical."""
        return [n for n in NON_CLINICAL if n in self.other] + [str(s) for s in self.clinical]

    def to_string(self) -> str:
        return " ".join(self.tokens())

    def __str__(self) -> str:
        return self.to_string()


@dataclass(frozen=True, slots=True)
class InvalidScope:
    scope: str
    reason: str


@dataclass(frozen=True, slots=True)
class ParseResult:
    scopes: ScopeSet
    invalid: tuple[InvalidScope, ...] = ()


class _Invalid(ValueError):
    pass


def parse_scopes(text: str | None, registry: Registry | None = None) -> ParseResult:
    """Parse a space-separated scope string. Never raises on client input."""
    reg = registry if registry is not None else load_registry()
    clinical: list[ClinicalScope] = []
    other: set[str] = set()
    invalid: list[InvalidScope] = []
    reported: set[str] = set()
    for token in (text or "").split(" "):
        if not token:
            continue  # tolerate doubled or trailing spaces
        if token in NON_CLINICAL:
            other.add(token)
            continue
        try:
            clinical.append(parse_clinical(token, reg))
        except _Invalid as exc:
            if token not in reported:
                reported.add(token)
                invalid.append(InvalidScope(token, str(exc)))
    return ParseResult(ScopeSet.of(clinical, other), tuple(invalid))


def parse_clinical(token: str, registry: Registry | None = None) -> ClinicalScope:
    """Parse one clinical scope; raises `ValueError` (with the reason) when it is not one."""
    reg = registry if registry is not None else load_registry()
    if not _SCOPE_TOKEN_RE.fullmatch(token):
        raise _Invalid("contains characters not allowed in an OAuth scope (RFC 6749 §3.3: "
                       "printable ASCII except space, '\"' and '\\'; percent-encode the rest)")
    m = _CLINICAL_RE.fullmatch(token)
    if m is None:
        raise _Invalid("unknown scope: expected a SMART scope such as patient/Observation.rs, "
                       "openid, fhirUser, launch/patient or offline_access")
    context, rtype, perms, raw_query = m["context"], m["type"], m["perms"], m["query"]
    if context not in CONTEXTS:
        raise _Invalid(f"unknown context {context!r}: expected patient, user or system")
    if rtype != "*" and not reg.is_resource_type(rtype):
        raise _Invalid(f"{rtype!r} is not an R4 resource type (names are case-sensitive) or '*'")
    v1 = perms in V1_TO_V2
    if v1:
        letters = V1_TO_V2[perms]
    elif perms and _V2_PERMS_RE.fullmatch(perms):
        letters = perms
    elif not perms:
        raise _Invalid("no permissions after '.': expected read, write, * or letters of cruds")
    else:
        raise _Invalid(f"invalid permissions {perms!r}: expected read, write, * (v1) or a "
                       "non-empty subset of c r u d s in that order (v2), e.g. rs or cruds")
    query: tuple[tuple[str, str], ...] = ()
    if raw_query is not None:
        if v1:
            raise _Invalid("a query restriction needs v2 permissions (e.g. .rs), not v1 "
                           f"{perms!r}")
        if rtype == "*":
            raise _Invalid("a query restriction needs a concrete resource type, not '*'")
        query = _parse_query(raw_query, rtype, reg)
    return ClinicalScope(context, rtype, letters, query, v1)



def _parse_query(raw: str, rtype: str, reg: Registry) -> tuple[tuple[str, str], ...]:
    if not raw:
        raise _Invalid("empty query after '?'")
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        name_raw, eq, value_raw = part.partition("=")
        if not eq or not name_raw or not value_raw:
            raise _Invalid(f"query part {part!r} is not name=value with both present")
        for piece in (name_raw, value_raw):
            if _BAD_PERCENT_RE.search(piece):
                raise _Invalid(f"malformed percent-encoding in {piece!r}")
        try:
            name = unquote(name_raw, errors="strict")
            value = unquote(value_raw, errors="strict")
        except UnicodeDecodeError:
            raise _Invalid(f"percent-encoding in {part!r} is not UTF-8") from None
        if not _PARAM_NAME_RE.fullmatch(name):
            raise _Invalid(f"query parameter {name!r}: only plain search parameter names are "
                           "supported in granular scopes (no modifiers, chains or _has)")
        param = reg.param(rtype, name)
        if param is None:
            raise _Invalid(f"{name!r} is not a search parameter of {rtype}")
        if param.type not in QUERY_PARAM_TYPES or param.expression is None:
            raise _Invalid(f"search parameter {name!r} of {rtype} is a {param.type} parameter; "
                           "granular scopes support token, reference, uri and string ones")
        pairs.append((name, value))
    # The same parser the search API uses judges the values, so policy.py can compile them.
    ctx = ParseContext(registry=reg, default_tz=UTC, base_urls=())
    _, issues = parse_search((rtype,), pairs, ctx)
    if issues:
        raise _Invalid("; ".join(i.diagnostics for i in issues))
    return tuple(pairs)


def normalise(scopes: ScopeSet) -> ScopeSet:
    """Every clinical scope in v2 syntax (`patient/*.read` → `patient/*.rs`)."""
    return ScopeSet.of((s.normalised() for s in scopes.clinical), scopes.other)


def permits(scopes: ScopeSet | Iterable[ClinicalScope], context: str, resource_type: str,
            interaction: str) -> tuple[ClinicalScope, ...]:
    """The scopes that allow `interaction` (c/r/u/d/s) on `resource_type` in `context`.

    Empty means denied; otherwise the caller ORs the matches' query restrictions (a match without
    a query means unrestricted).
    """
    if interaction not in PERMISSION_ORDER or len(interaction) != 1:
        raise ValueError(f"interaction must be one of c, r, u, d, s; got {interaction!r}")
    if context not in CONTEXTS:
        raise ValueError(f"context must be patient, user or system; got {context!r}")
    items = scopes.clinical if isinstance(scopes, ScopeSet) else tuple(scopes)
    return tuple(s for s in items if s.allows(context, resource_type, interaction))


def _intersect(req: ClinicalScope, ceiling: ClinicalScope) -> ClinicalScope | None:
    if req.context != ceiling.context:
        return None
    if req.resource_type == "*":
        rtype = ceiling.resource_type
    elif ceiling.resource_type in (req.resource_type, "*"):
        rtype = req.resource_type
    else:
        return None
    letters = "".join(p for p in PERMISSION_ORDER
                      if p in req.permissions and p in ceiling.permissions)
    if not letters:
        return None
    if set(ceiling.query) <= set(req.query):
        query = req.query  # the ceiling allows everything the request restricts itself to
    elif set(req.query) <= set(ceiling.query):
        query = ceiling.query  # e.g. the user ticked only a category of what was asked
    else:
        return None  # two different restrictions: granted only when one contains the other
    result = ClinicalScope(req.context, rtype, letters, query, req.v1)
    return req if result.normalised() == req.normalised() else result


def narrow(requested: ScopeSet, ceiling: ScopeSet) -> ScopeSet:
    """What may be granted of `requested` under `ceiling` (client registration, user choice,
    or the original grant at refresh). Never wider than either, in permission terms.
    """
    out: list[ClinicalScope] = []
    for req in requested.clinical:
        found = [r for g in ceiling.clinical if (r := _intersect(req, g)) is not None]
        # one requested scope may meet several ceiling scopes: keep only the widest results
        out.extend(r for i, r in enumerate(found)
                   if not any(o.covers(r) and (not r.covers(o) or j < i)
                              for j, o in enumerate(found) if j != i))
    return ScopeSet.of(out, requested.other & ceiling.other)


def within(narrower: ScopeSet, wider: ScopeSet) -> bool:
    """True when everything `narrower` grants is granted by `wider` (per interaction)."""
    if not narrower.other <= wider.other:
        return False
    for s in narrower.clinical:
        for p in s.permissions:
            atom = ClinicalScope(s.context, s.resource_type, p, s.query)
            if not any(w.covers(atom) for w in wider.clinical):
                return False
    return True


def needs_patient_context(scopes: ScopeSet) -> bool:
    """A patient must be in context: any `patient/` scope, or `launch/patient` was asked for."""
    return "launch/patient" in scopes.other or any(s.context == "patient" for s in scopes.clinical)


def needs_encounter_context(scopes: ScopeSet) -> bool:
    return "launch/encounter" in scopes.other


def wants_id_token(scopes: ScopeSet) -> bool:
    """OpenID Connect: `openid` asks for an id_token."""
    return "openid" in scopes.other


def wants_fhir_user(scopes: ScopeSet) -> bool:
    """`openid` + `fhirUser`: the id_token carries the `fhirUser` claim (SMART 2.2)."""
    return "openid" in scopes.other and "fhirUser" in scopes.other


# --- plain-words descriptions for the approval page ------------------------------------------

TYPE_NAMES: dict[str, tuple[str, str]] = {  # type -> (Chinese, English plural)
    "Patient": ("基本信息", "basic information"),
    "Observation": ("检验检查结果", "observations"),
    "Condition": ("诊断", "conditions and diagnoses"),
    "MedicationRequest": ("处方", "prescriptions"),
    "Encounter": ("就诊记录", "visits"),
    "DiagnosticReport": ("检验检查报告", "lab and imaging reports"),
    "AllergyIntolerance": ("过敏", "allergies"),
    "Procedure": ("手术操作", "procedures"),
    "Immunization": ("预防接种", "immunizations"),
    "Coverage": ("医保", "insurance coverage"),
    "Claim": ("费用结算", "claims"),
    "ClaimResponse": ("结算结果", "claim responses"),
    "ExplanationOfBenefit": ("医保报销明细", "explanations of benefit"),
    "DocumentReference": ("病历文书", "clinical documents"),
    "Composition": ("病历", "medical records"),
    "Practitioner": ("医务人员", "practitioners"),
    "PractitionerRole": ("医务人员职务", "practitioner roles"),
    "Organization": ("医疗机构", "organizations"),
    "Location": ("科室与地点", "locations"),
    "Medication": ("药品", "medications"),
    "MedicationStatement": ("用药记录", "medication statements"),
    "MedicationAdministration": ("给药记录", "medication administrations"),
    "MedicationDispense": ("发药记录", "medication dispenses"),
    "CarePlan": ("诊疗计划", "care plans"),
    "CareTeam": ("诊疗团队", "care teams"),
    "Goal": ("健康目标", "goals"),
    "ServiceRequest": ("检查检验申请", "service requests"),
    "Specimen": ("标本", "specimens"),
    "Device": ("医疗器械", "devices"),
    "ImagingStudy": ("影像检查", "imaging studies"),
    "Media": ("影像资料", "media"),
    "Provenance": ("数据来源", "provenance records"),
    "RelatedPerson": ("亲属与联系人", "related persons"),
    "FamilyMemberHistory": ("家族史", "family history"),
    "Appointment": ("预约", "appointments"),
    "Schedule": ("排班", "schedules"),
    "Slot": ("号源", "appointment slots"),
    "Consent": ("知情同意", "consents"),
    "Questionnaire": ("问卷", "questionnaires"),
    "QuestionnaireResponse": ("问卷回答", "questionnaire responses"),
    "EpisodeOfCare": ("诊疗周期", "episodes of care"),
    "NutritionOrder": ("膳食医嘱", "nutrition orders"),
    "RiskAssessment": ("风险评估", "risk assessments"),
    "ClinicalImpression": ("临床评估", "clinical impressions"),
    "AdverseEvent": ("不良事件", "adverse events"),
    "Flag": ("提醒标记", "flags"),
    "Account": ("账户", "accounts"),
    "ChargeItem": ("收费项目", "charge items"),
    "Invoice": ("发票", "invoices"),
    "CoverageEligibilityRequest": ("医保资格查询", "coverage eligibility requests"),
    "Communication": ("沟通记录", "communications"),
    "Task": ("任务", "tasks"),
    "List": ("列表", "lists"),
    "Binary": ("文件", "files"),
    "Group": ("人群分组", "groups"),
    "Person": ("人员", "persons"),
}
ALL_TYPES_NAME = ("全部健康记录", "health records of every type")

_VERBS: dict[str, tuple[str, str]] = {
    "c": ("创建", "create"), "r": ("读取", "read"), "u": ("修改", "update"),
    "d": ("删除", "delete"), "s": ("搜索", "search"),
}
CATEGORY_NAMES: dict[str, tuple[str, str]] = {  # observation/condition category codes
    "laboratory": ("检验", "laboratory"), "vital-signs": ("生命体征", "vital signs"),
    "social-history": ("社会史", "social history"), "survey": ("问卷评估", "surveys"),
    "imaging": ("影像", "imaging"), "exam": ("体格检查", "physical exam"),
    "procedure": ("操作", "procedures"), "therapy": ("治疗", "therapy"),
    "activity": ("活动", "activity"),
    "problem-list-item": ("问题清单", "problem list"),
    "encounter-diagnosis": ("就诊诊断", "encounter diagnoses"),
    "health-concern": ("健康关注", "health concerns"),
}
NON_CLINICAL_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "openid": ("确认您的身份", "Confirm your identity"),
    "fhirUser": ("知道当前登录的用户是谁（患者或医务人员）",
                 "Know who is signed in (patient or practitioner)"),
    "profile": ("读取您的姓名等个人资料", "Read your name and profile"),
    "launch": ("从电子病历中启动时获得当前患者和就诊信息",
               "Receive the current patient and visit when launched from the EHR"),
    "launch/patient": ("知道当前选择的患者", "Know which patient is selected"),
    "launch/encounter": ("知道当前选择的就诊", "Know which visit is selected"),
    "offline_access": ("在您退出后仍可继续访问（直到您撤销授权）",
                       "Keep access after you sign out (until you revoke it)"),
    "online_access": ("仅在您登录期间持续访问", "Keep access only while you are signed in"),
}


def type_name(resource_type: str, lang: Lang = "zh") -> str:
    """Plain name of a resource type; generic fallback for types without one."""
    if resource_type == "*":
        return ALL_TYPES_NAME[0 if lang == "zh" else 1]
    names = TYPE_NAMES.get(resource_type)
    if names is not None:
        return names[0 if lang == "zh" else 1]
    if lang == "zh":
        return f"{resource_type} 记录"
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", resource_type).lower()
    return f"{words} records"


def _join(words: list[str], lang: Lang) -> str:
    if len(words) == 1:
        return words[0]
    if lang == "zh":
        return "、".join(words[:-1]) + "并" + words[-1]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _describe_query(query: tuple[tuple[str, str], ...], lang: Lang) -> str:
    parts = []
    for name, value in query:
        code = value.rsplit("|", 1)[-1]
        if name == "category" and code in CATEGORY_NAMES:
            label = CATEGORY_NAMES[code][0 if lang == "zh" else 1]
            parts.append(f"类别：{label}" if lang == "zh" else f"category: {label}")
        else:
            parts.append(f"{name}={value}")
    if lang == "zh":
        return "（仅限" + "，".join(parts) + "）"
    return " (only " + ", ".join(parts) + ")"


def describe(scope: ClinicalScope | str, lang: Lang = "zh") -> str:
    """One scope in plain words for the approval page.

    `patient/Observation.rs` → 读取并搜索您的检验检查结果 (Observation) /
    Read and search your observations (Observation).
    """
    zh = lang == "zh"
    if isinstance(scope, str):
        if scope in NON_CLINICAL_DESCRIPTIONS:
            return NON_CLINICAL_DESCRIPTIONS[scope][0 if zh else 1]
        try:
            scope = parse_clinical(scope)
        except ValueError:
            return f"未知权限 {scope}" if zh else f"Unknown permission {scope}"
    verbs = _join([_VERBS[p][0 if zh else 1] for p in scope.permissions], lang)
    name = type_name(scope.resource_type, lang)
    if zh:
        whose = {"patient": "您的", "user": "您有权查看的", "system": "系统中所有"}[scope.context]
        text = f"{verbs}{whose}{name}"
    else:
        verbs = verbs[0].upper() + verbs[1:]
        whose = {"patient": f"your {name}", "user": f"the {name} you have access to",
                 "system": f"all {name} in the system"}[scope.context]
        text = f"{verbs} {whose}"
    if scope.resource_type != "*":
        text += f" ({scope.resource_type})"
    if scope.query:
        text += _describe_query(scope.query, lang)
    return text
