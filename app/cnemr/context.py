"""The hospital a source row comes from, and the stable resource ids derived from source keys.

Re-importing the same rows must update, not duplicate: every resource id is a short SHA-256 of
the hospital's OID and the row's own key (院内患者ID, 检验报告单号 + 项目代码, …). The key is a
hospital-internal number, never a 身份证号, and the id is a one-way hash of it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Canonical URLs of the CN resource profiles of fhir_profiles/StructureDefinition/. A mapper
# declares the one its resource conforms to in meta.profile, and the server then holds the
# resource to it on every write (REST and import).
PROFILE_BASE = "https://fhir.yilian.cn/StructureDefinition/"
CN_PATIENT = PROFILE_BASE + "cn-patient"
CN_ENCOUNTER = PROFILE_BASE + "cn-encounter"
CN_CONDITION = PROFILE_BASE + "cn-condition"
CN_OBSERVATION_LAB = PROFILE_BASE + "cn-observation-lab"
CN_DIAGNOSTIC_REPORT = PROFILE_BASE + "cn-diagnostic-report"
CN_MEDICATION_REQUEST = PROFILE_BASE + "cn-medication-request"
CN_PROCEDURE = PROFILE_BASE + "cn-procedure"
CN_COMPOSITION = PROFILE_BASE + "cn-composition"
CN_CLAIM = PROFILE_BASE + "cn-claim"
CN_COVERAGE = PROFILE_BASE + "cn-coverage"
CN_DOCUMENT_REFERENCE = PROFILE_BASE + "cn-document-reference"

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_ZONE = re.compile(r"[+-](0[0-9]|1[0-3]):[0-5][0-9]|\+14:00")


@dataclass(frozen=True, slots=True)
class Hospital:
    """Where rows come from: the hospital's organisation OID and the zone of its clock.

    `patient_id_system`, `lis_item_system` and `lis_panel_system` default to
    `urn:oid:<oid>.patient`, `urn:oid:<oid>.lis-item` and `urn:oid:<oid>.lis-panel`; a
    hospital that has registered numeric sub-arcs for them (an `urn:oid:` URI strictly allows
    digits only, RFC 3001) passes those instead.
    """

    oid: str
    tz: str = "+08:00"
    patient_id_system: str = ""
    lis_item_system: str = ""
    lis_panel_system: str = ""

    def __post_init__(self) -> None:
        if not _OID.fullmatch(self.oid):
            raise ValueError(
                f"hospital OID {self.oid!r} is not a dotted numeric OID such as "
                "2.16.156.10011.1.5.xxxx (give it without the urn:oid: prefix)")
        if not _ZONE.fullmatch(self.tz):
            raise ValueError(f"hospital time zone {self.tz!r} must be an offset like +08:00")
        if not self.patient_id_system:
            object.__setattr__(self, "patient_id_system", f"urn:oid:{self.oid}.patient")
        if not self.lis_item_system:
            object.__setattr__(self, "lis_item_system", f"urn:oid:{self.oid}.lis-item")
        if not self.lis_panel_system:
            object.__setattr__(self, "lis_panel_system", f"urn:oid:{self.oid}.lis-panel")


def stable_id(prefix: str, hospital: Hospital, *key: str) -> str:
    """`<prefix>-<20 hex digits>` from the hospital OID and the source key parts."""
    digest = hashlib.sha256("\x1f".join((hospital.oid, prefix, *key)).encode()).hexdigest()
    return f"{prefix}-{digest[:20]}"


def patient_resource_id(hospital: Hospital, patient_id: str) -> str:
    """Patient.id for a 院内患者ID (HIS patient id)."""
    return stable_id("pat", hospital, patient_id)


def encounter_resource_id(hospital: Hospital, visit_id: str) -> str:
    """Encounter.id for a visit key; 门诊号 recycles, so callers pass a key unique per visit
    (e.g. 门诊号 + visit date) when the hospital's 门诊号 is not unique on its own."""
    return stable_id("enc", hospital, visit_id)


def lab_report_resource_id(hospital: Hospital, report_id: str) -> str:
    """DiagnosticReport.id for a 检验报告单号."""
    return stable_id("dr", hospital, report_id)


def lab_observation_resource_id(hospital: Hospital, report_id: str, item_code: str) -> str:
    """Observation.id for one item (项目代码) of a 检验报告单."""
    return stable_id("obs", hospital, report_id, item_code)


def outpatient_visit_key(visit_no: str, visit_date: str) -> str:
    """The visit key of a 门(急)诊 visit: 门(急)诊号 and the visit's calendar date (FHIR date,
    YYYY-MM-DD) as `<门诊号>@<YYYYMMDD>`. 门诊号 recycles across days, so the number alone
    would merge two visits; 挂号 (`app.cnemr.visit`) and 处方 (`app.cnemr.prescription`) both
    key their Encounter reference with this, and an export that carries the same key in its
    `visit_id` (lab) points at the same Encounter through `encounter_resource_id`."""
    return f"{visit_no}@{visit_date.replace('-', '')}"


def diagnosis_resource_id(hospital: Hospital, visit_id: str, rank: int) -> str:
    """Condition.id for the diagnosis of rank `rank` (1 = 主要诊断) of a visit key."""
    return stable_id("cond", hospital, visit_id, str(rank))


def registration_fee_resource_id(hospital: Hospital, visit_id: str) -> str:
    """ChargeItem.id for the 挂号费 of a visit key."""
    return stable_id("chg", hospital, visit_id, "registration")


def prescription_line_resource_id(hospital: Hospital, prescription_no: str, line: str) -> str:
    """MedicationRequest.id for one line (明细序号, or 组号 + 药品代码) of a 处方编号."""
    return stable_id("medrx", hospital, prescription_no, line)


def admission_visit_key(admission_no: str, admission_count: int) -> str:
    """The visit key of one 住院 (住院号 or 病案号 + 住院次数): many hospitals keep one 住院号
    per patient for life, so only the pair names an admission. Lab rows of that admission
    pass the same key as `visit_id` to point at its Encounter."""
    return f"{admission_no}/{admission_count}"


def homepage_resource_id(prefix: str, hospital: Hospital, visit_key: str, part: str) -> str:
    """Id of one resource of a 住院病案首页 (a diagnosis slot, a procedure slot, …), derived
    from the admission's visit key and the part of the 首页 it comes from."""
    return stable_id(prefix, hospital, visit_key, part)


def organization_resource_id(hospital: Hospital) -> str:
    """Organization.id of the hospital itself (医疗机构), from its OID alone."""
    return stable_id("org", hospital)


def department_resource_id(hospital: Hospital, department_code: str) -> str:
    """Organization.id of a 科室 for its 科室代码."""
    return stable_id("dept", hospital, department_code)


def practitioner_resource_id(hospital: Hospital, staff_id: str) -> str:
    """Practitioner.id for a 医务人员工号 (HIS staff number)."""
    return stable_id("prac", hospital, staff_id)
