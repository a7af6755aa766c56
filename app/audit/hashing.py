"""What goes on chain, and how anyone recomputes it: keyed hashes, canonical JSON, entry bytes.

Nothing personal is ever put on chain. Actors, patients and resources appear only as keyed
hashes `HMAC-SHA256(secret, text)` with the server secret kept in `var/audit/secret` (32 random
bytes, mode 0600, created on first use); content appears only as `SHA-256` of canonical JSON.
The exact byte formats are in docs/chain.md, so a verifier needs neither this code nor us.

- canonical JSON: UTF-8, object keys sorted, no insignificant whitespace, non-ASCII characters
  as themselves (orjson with OPT_SORT_KEYS); the FHIR resources the store keeps are already in
  this form, so a resource version's content hash is SHA-256 of the bytes `GET` returns.
- an AuditEvent's entry hash: SHA-256 of the canonical JSON of the AuditEvent without `meta`
  and without the chain-proof extension (both are added after the entry is hashed).
- an access entry (AuditLog.recordBatch): 65 bytes, entryHash | patientHash | action code.
- a version entry (Anchor.anchorVersions): 64 bytes, resourceKey | contentHash, where
  resourceKey = HMAC("<type>/<id>/_history/<version>").
- a consent decision (ConsentRegistry.decide): patientHash | granteeHash | scopeHash | status
  (1 byte) | expiresAt (8 bytes, big-endian unix seconds, 0 = none) | decisionHash = 137 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import orjson

SECRET_BYTES = 32
ZERO32 = bytes(32)
ACCESS_ENTRY_SIZE = 65
VERSION_ENTRY_SIZE = 64
CONSENT_ENTRY_SIZE = 137

# AuditEvent.action (http://hl7.org/fhir/audit-event-action) -> the byte recorded on chain
ACTION_CODES: dict[str, int] = {"C": 1, "R": 2, "U": 3, "D": 4, "E": 5}
# ConsentRegistry.Status
CONSENT_GRANTED, CONSENT_DENIED, CONSENT_REVOKED = 1, 2, 3

PROOF_URL = "https://fhir.yilian.cn/StructureDefinition/chain-proof"
PATIENT_KEY_URL = "https://fhir.yilian.cn/StructureDefinition/chain-patient-key"


def canonical_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def load_secret(path: Path) -> bytes:
    """The server secret at `path`, created (mode 0600) on first use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = secrets.token_hex(SECRET_BYTES).encode()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:  # another worker won the race: use its secret
            return load_secret(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    secret = bytes.fromhex(data.decode().strip())
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"{path} must hold {SECRET_BYTES} bytes as hex")
    return secret


class Keyer:
    """Keyed hashes with the server secret: the only way identities reach the chain."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def in_var_dir(cls, var_dir: Path) -> Keyer:
        return cls(load_secret(var_dir / "audit" / "secret"))

    def key(self, text: str) -> bytes:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).digest()

    def patient(self, patient_id: str | None) -> bytes:
        return self.key(f"Patient/{patient_id}") if patient_id else ZERO32

    def version(self, type_: str, id_: str, version: int) -> bytes:
        return self.key(f"{type_}/{id_}/_history/{version}")


def audit_body_for_hash(event: dict[str, Any]) -> dict[str, Any]:
    """The AuditEvent as hashed: without `meta` and without the chain-proof extension."""
    out = {k: v for k, v in event.items() if k != "meta"}
    ext = out.get("extension")
    if isinstance(ext, list):
        kept = [e for e in ext if not (isinstance(e, dict) and e.get("url") == PROOF_URL)]
        if kept:
            out["extension"] = kept
        else:
            out.pop("extension")
    return out


def entry_hash(event: dict[str, Any]) -> bytes:
    return sha256(canonical_json(audit_body_for_hash(event)))


def access_entry(entry: bytes, patient_hash: bytes, action: str) -> bytes:
    return entry + patient_hash + bytes((ACTION_CODES[action],))


def version_entry(resource_key: bytes, body: bytes) -> bytes:
    return resource_key + sha256(body)


def consent_entry(patient_hash: bytes, grantee_hash: bytes, scope_hash: bytes, status: int,
                  expires_at: int, decision_hash: bytes) -> bytes:
    return (patient_hash + grantee_hash + scope_hash + bytes((status,))
            + expires_at.to_bytes(8, "big") + decision_hash)
