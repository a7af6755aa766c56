"""Consent: FHIR R4 Consent records of per-app SMART authorizations and their on-chain form."""
