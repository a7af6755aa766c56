"""The Chinese EMR datasets the importer knows, each with its mapper (WS 445 parts → FHIR R4).

A dataset declares the canonical data elements its mapper reads, which element groups source
rows into one unit (rows of one report, one prescription, one 首页 …; None: each row alone), and
`map_rows(rows, hospital) -> (resources, errors)` over one such group, where `RowError.row` is
the index of the offending row within the group. Adding a dataset is adding an entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.cnemr import (
    billing,
    card,
    documents,
    exam,
    homepage,
    lab,
    organization,
    patient,
    prescription,
    visit,
)
from app.cnemr.context import Hospital
from app.cnemr.errors import RowError, per_row

Resource = dict[str, Any]
MapRows = Callable[[Sequence[Mapping[str, Any]], Hospital],
                   tuple[list[Resource], list[RowError]]]


@dataclass(frozen=True)
class Dataset:
    name: str
    elements: frozenset[str]
    group_by: str | None
    map_rows: MapRows


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("patient", frozenset({
        "patient_id", "name", "gender_code", "birth_date", "id_type_code", "id_number",
        "ethnicity_code", "marital_status_code", "phone", "address", "medical_record_no",
        "address_code", "health_card_no", "occupation_code", "contact_name",
        "contact_relation", "contact_phone", "contact_address"}),
        None, per_row(patient.map_patient)),
    Dataset("lab", frozenset({
        "report_id", "patient_id", "visit_id", "visit_no", "visit_date", "item_code",
        "item_name", "result", "unit",
        "reference_range", "abnormal_flag", "specimen_no", "panel_code", "panel_name",
        "collected_time", "test_time", "report_time", "department", "doctor",
        "specimen_type", "order_no", "ordering_doctor", "order_time"}),
        "report_id", lab.map_lab_rows),
    Dataset("visit", frozenset({
        "visit_no", "visit_date", "visit_time", "patient_id", "visit_type_code", "department",
        "doctor", "diagnosis_code", "diagnosis_name", "registration_fee"}),
        None, visit.map_visit_rows),
    Dataset("prescription", frozenset({
        "prescription_no", "patient_id", "visit_no", "visit_date", "prescribed_time", "doctor",
        "prescription_type", "dispensed", "doses_count", "line_no", "drug_code",
        "nhsa_drug_code", "drug_name", "specification", "dose", "dose_unit", "frequency_code",
        "route", "quantity", "quantity_unit", "days", "group_no", "decoction",
        "dispensed_time", "pharmacist"}),
        "prescription_no", prescription.map_prescription_rows),
    Dataset("homepage", homepage.ELEMENTS, None, homepage.map_homepage_rows),
    Dataset("billing", frozenset({
        "settlement_id", "patient_id", "visit_id", "inpatient_no", "admission_count",
        "outpatient_no", "visit_date", "patient_type", "invoice_no", "settlement_time",
        "insurance_settlement_no",
        "item_code", "item_name", "fee_category", "unit_price", "quantity", "amount",
        "total_amount", "fund_paid", "account_paid", "cash_paid", "copay", "self_pay",
        "insurance_type", "insurer_name"}),
        "settlement_id", billing.map_billing_rows),
    Dataset("staff", frozenset({
        "hospital_name", "department_code", "department_name", "staff_id", "staff_name",
        "title", "license_no", "id_number"}),
        "department_code", organization.map_staff_rows),
    Dataset("exam", frozenset({
        "report_no", "patient_id", "visit_id", "exam_code", "exam_name", "modality",
        "body_site", "exam_time", "report_time", "findings", "impression", "department",
        "report_doctor", "review_doctor", "study_uid", "accession_no"}),
        "report_no", exam.map_exam_rows),
    Dataset("card", frozenset({
        "card_no", "card_type", "patient_id", "card_status", "issue_date", "expiry_date",
        "insurance_type", "insurer_name", "insurance_area"}),
        None, card.map_card_rows),
    Dataset("outpatient_record", documents.OUTPATIENT_ELEMENTS, None,
            documents.map_outpatient_record_rows),
    Dataset("document", documents.DOCUMENT_ELEMENTS, "document_no",
            documents.map_document_rows),
)}
