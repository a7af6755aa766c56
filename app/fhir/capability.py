"""The CapabilityStatement (GET /metadata), generated from what the server has registered.

Resource types and their search parameters come from the registry, operations from the
OperationDefinitions the operation modules declare; nothing here is written by hand per type.
`rest[0].security` (the SMART `oauth-uris` extension) comes from `app/auth/discovery.py`, the
function that also builds `.well-known/smart-configuration`, so the two cannot disagree.
"""

from __future__ import annotations

from typing import Any

from app import __version__
from app.auth.discovery import SmartEndpoints, capability_security
from app.definitions.registry import Registry
from app.fhir.operations import OPERATIONS

INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance",
                "history-type", "create", "search-type")


def capability_statement(registry: Registry, base_url: str, software_date: str,
                         transactions: bool = True) -> dict[str, Any]:
    resources = []
    for rtype in registry.resource_types:
        params = registry.search_params.get(rtype, {})
        entry: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": c} for c in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical", "local"],
            "searchInclude": [*sorted(f"{rtype}:{c}" for c, p in params.items()
                                      if p.type == "reference"), "*"],
            "searchRevInclude": ["*"],
            "searchParam": [
                {"name": code, "definition": p.url, "type": p.type,
                 **({"documentation": p.description} if p.description else {})}
                for code, p in sorted(params.items())
                if p.type != "special" and (p.expression is not None or code in ("_content",
                                                                                  "_text"))
            ],
        }
        if registry.profiles.get(rtype):
            entry["supportedProfile"] = sorted(registry.profiles[rtype])
        ops = [op for op in OPERATIONS if rtype in op.resource_types or "Resource" in
               op.resource_types]
        if ops:
            entry["operation"] = [{"name": op.code, "definition": op.url} for op in ops]
        resources.append(entry)
    system_interactions = [{"code": "history-system"}, {"code": "search-system"},
                           {"code": "batch"}]
    if transactions:
        system_interactions.insert(0, {"code": "transaction"})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": software_date,
        "publisher": "Yilian (医链)",
        "kind": "instance",
        "software": {"name": "Yilian (医链)", "version": __version__},
        "implementation": {"description": "Yilian FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": capability_security(SmartEndpoints.from_base_url(base_url)),
            "resource": resources,
            "interaction": system_interactions,
            "operation": [{"name": op.code, "definition": op.url}
                          for op in OPERATIONS if op.system_level],
            "searchParam": [
                {"name": "_type", "type": "token",
                 "documentation": "resource types of a system-level search"},
            ],
        }],
    }
