"""FHIR R4 REST API: interactions, formats, operations, bundles."""
