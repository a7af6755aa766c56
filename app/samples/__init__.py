"""Synthetic but realistic Chinese hospital data as FHIR R4 JSON, for tests, demos and load runs.

Nothing here describes a real person: names, 身份证号 (with valid check characters), phone numbers
and addresses are drawn from a seeded random generator.
"""

from app.samples.hospital import HospitalGenerator, transaction_bundle
from app.samples.identity import (
    IdInfo,
    check_digit,
    is_valid_id,
    make_id,
    parse_id,
    upgrade_15_to_18,
)

__all__ = [
    "HospitalGenerator",
    "IdInfo",
    "check_digit",
    "is_valid_id",
    "make_id",
    "parse_id",
    "transaction_bundle",
    "upgrade_15_to_18",
]
