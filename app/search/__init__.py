"""FHIR R4 search: index extraction from SearchParameter definitions, query parsing, paging."""
