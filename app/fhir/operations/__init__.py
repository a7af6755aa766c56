"""FHIR operations, each declared by an OperationDefinition (one module per operation)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OperationDecl:
    code: str  # without the `$`
    url: str  # canonical of its OperationDefinition
    resource_types: tuple[str, ...]
    type_level: bool
    instance_level: bool
    system_level: bool = False


OPERATIONS: tuple[OperationDecl, ...] = (
    OperationDecl("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                  ("Resource",), True, True),
    OperationDecl("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                  ("Patient",), False, True),
    OperationDecl("import-cn", "https://fhir.yilian.cn/OperationDefinition/import-cn",
                  (), False, False, system_level=True),
)
