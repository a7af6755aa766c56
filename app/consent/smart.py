"""Writes the Consent of each SMART authorization decision through the FHIR service.

The authorization server (`app/auth/authorize.py`, `app/auth/routes_token.py`) calls this for
an approval (before the code is issued: a failed write means no code), a denial, and a
revocation of the grant. The Consents are built by `app/consent/records.py`; they are written
with `FhirService` under an internal principal acting for the signed-in user, so they are
validated against R4, audited, and their versions anchored like every other write, and the
auditor turns each version into on-chain decisions (`app/consent/chain.py`).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.auth.scopes import ScopeSet
from app.auth.store import Client, Grant
from app.consent.chain import patient_id
from app.consent.records import (
    approval_consent,
    consent_id_for_grant,
    denial_consent,
    revoked_consent,
    withheld_scopes,
)
from app.fhir.interactions import ID_RE, Call, FhirService
from app.fhir.outcome import FhirError
from app.pipeline.hooks import Principal

CONSENT = "Consent"


def client_name(client: Client) -> str:
    return client.name_zh or client.name_en or client.client_id


class SmartConsents:
    """The Consent records of one app's authorizations, written through `service`."""

    def __init__(self, service: FhirService) -> None:
        self.service = service

    @staticmethod
    def _call(fhir_user: str | None, client_id: str | None = None,
              address: str | None = None) -> Call:
        return Call(principal=Principal(subject=fhir_user, client_id=client_id,
                                        address=address, anonymous=False, internal=True),
                    prefer_return="minimal")

    async def organization_of(self, patient: str) -> str | None:
        """The patient's managing organization (`Organization/<id>`), when recorded."""
        v = await self.service.store.read("Patient", patient)
        if v is None or v.deleted or not v.body:
            return None
        body: dict[str, Any] = orjson.loads(v.body)
        ref = (body.get("managingOrganization") or {}).get("reference")
        return ref if isinstance(ref, str) and ref.startswith("Organization/") else None

    async def approved(self, *, grant_id: str, client: Client, fhir_user: str, patient: str,
                       requested: ScopeSet, granted: ScopeSet, start: float, end: float,
                       address: str | None = None) -> str:
        """Create the active Consent of an approval; its id. Raises `FhirError` (or a store
        error) when it cannot be written."""
        consent = approval_consent(
            grant_id=grant_id, client_id=client.client_id, client_name=client_name(client),
            patient=patient, performer=fhir_user,
            organization=await self.organization_of(patient), granted=granted,
            withheld=withheld_scopes(requested, granted), start=start, end=end)
        consent_id = consent_id_for_grant(grant_id)
        await self.service.create(self._call(fhir_user, address=address), CONSENT, consent,
                                  assigned_id=consent_id)
        return consent_id

    async def denied(self, *, client: Client, fhir_user: str, patient: str,
                     requested: ScopeSet, at: float, address: str | None = None) -> str:
        """Create the rejected Consent of a denial; its id."""
        consent = denial_consent(
            client_id=client.client_id, client_name=client_name(client), patient=patient,
            performer=fhir_user, organization=await self.organization_of(patient),
            requested=requested, at=at)
        result = await self.service.create(self._call(fhir_user, address=address), CONSENT,
                                           consent)
        assert result.version is not None
        return result.version.id

    async def revoked(self, grant: Grant, at: float, *, client_id: str | None = None,
                      address: str | None = None) -> bool:
        """Write the inactive version of `grant`'s Consent; False when the grant has none
        (no patient in context, or granted before Consents were recorded) or it is inactive
        already."""
        consent_id = consent_id_for_grant(grant.grant_id)
        if grant.patient is None or not ID_RE.match(consent_id):
            return False
        call = self._call(grant.fhir_user, client_id, address)
        for _ in range(3):  # a concurrent change of the Consent: read it again
            current = await self.service.store.read(CONSENT, consent_id)
            if current is None or current.deleted or not current.body:
                return False
            body: dict[str, Any] = orjson.loads(current.body)
            if body.get("status") != "active" or \
                    patient_id(body.get("patient")) != grant.patient:
                return False
            call.if_match = f'W/"{current.version}"'
            try:
                await self.service.update(call, CONSENT, consent_id, revoked_consent(body, at))
            except FhirError as exc:
                if exc.status == 412:
                    continue
                raise
            return True
        return False
