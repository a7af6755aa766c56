"""SMART on FHIR authorization (SMART App Launch 2.2): scopes, tokens, clients, pages.

Each module is named after the specification it implements; see docs/smart-auth-design.md §2.
"""
