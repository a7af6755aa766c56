"""Yilian (医链): a FHIR R4 health information exchange server for Chinese hospitals."""

__version__ = "0.1.0"
