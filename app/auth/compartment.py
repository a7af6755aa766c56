"""Which patients a resource belongs to: the R4 Patient compartment, evaluated on one resource.

The official R4 CompartmentDefinition `Patient` (vendored as the registry's
`compartment_patient`: resource type -> names of the search parameters linking it to the
compartment, http://hl7.org/fhir/R4/compartmentdefinition-patient.html) says a resource is in
`Patient/x`'s compartment when one of those parameters refers to `Patient/x`. This module
answers that question for a resource in hand (a body about to be written, a version read back)
with exactly the extraction search uses: the `Indexer`'s compiled FHIRPath expressions and its
reference conversion, restricted to the type's compartment parameters, keeping the local
targets of type `Patient`. So `patients_of(r)` is the set of patient ids whose
`Patient/<id>/$everything` (`SqliteStore.everything`: `ix_reference` rows of those parameters
with `ttype = 'Patient'`) lists `r` once it is stored. What that means for references:

- `Patient/x`, `Patient/x/_history/2` and absolute URLs under one of the Indexer's base URLs
  (this server's) count as `x`;
- absolute URLs of other servers, `urn:uuid:`/`urn:oid:`, contained `#x` and identifier-only
  references count for no one;
- only references of the compartment's parameters count: an Observation's `subject` and
  `performer` do, its `focus` or `hasMember` do not; a `Provenance` is in the compartment of
  the patients its `target` names (parameter `patient` = `target.where(resolve() is
  Patient)`), not of the patients whose records it is about; a `Group` of its `member`s.

A Patient is in its own compartment (the definition's `{def}`, `_id`) and, through its `link`
parameter, in the compartment of every patient its `Patient.link.other` names.

Shared types. Types the definition lists without parameters (`member_types()` leaves them
out) are never in any patient's compartment: Organization, Practitioner, PractitionerRole,
Location, Medication, Substance, HealthcareService, Endpoint, Device, the conformance and
terminology types, but also Binary, Bundle, Contract, Slot, MessageHeader and the like.
Recommendation for the access policy (docs/smart-auth-design.md §4, "shared-type allow-list";
no policy is made here): let `patient/` tokens read the directory and reference types an app
must resolve to display a patient's record -- Practitioner, PractitionerRole, Organization,
Location, Medication, Substance, HealthcareService, Endpoint and the conformance types served
from `fhir_profiles/` (StructureDefinition, ValueSet, CodeSystem, ...) -- and deny the others:
Binary, Bundle, Device, Slot, Contract, MessageHeader, PaymentNotice, ... can carry one
patient's data without a reference this module can see. Note also that `Group` is a member type
but a Group lists many patients: a patient token would see the whole member list of any group
it is in, so the policy may want to deny Group to `patient/` tokens outright.
"""

from __future__ import annotations

from typing import Any

from app.definitions.registry import Registry
from app.search.extract import Indexer

__all__ = ["PatientCompartment"]


# The CompartmentDefinition's marker for "the focal resource itself" (`_id` of a Patient).
_SELF = "{def}"


class PatientCompartment:
    """The R4 Patient compartment of single resources, as search computes it.

    `indexer` decides which absolute URLs are this server's (its `base_urls`); build it as the
    store does (`Indexer.from_settings`) so the answers agree with `$everything`.
    """

    def __init__(self, registry: Registry, indexer: Indexer) -> None:
        self.registry = registry
        self.indexer = indexer
        self._params: dict[str, frozenset[str]] = {
            rtype: frozenset(p for p in params if p != _SELF)
            for rtype, params in registry.compartment_patient.items()
        }
        members = {rtype for rtype, params in self._params.items() if params}
        members.add("Patient")
        self._members = frozenset(members)

    def member_types(self) -> frozenset[str]:
        """Resource types whose instances can be in a patient's compartment."""
        return self._members

    def is_shared(self, resource_type: str) -> bool:
        """A known resource type that is never in any patient's compartment (Organization,
        Practitioner, Location, Medication, ...). False for member types and unknown names."""
        return self.registry.is_resource_type(resource_type) and resource_type not in self._members

    def params(self, resource_type: str) -> frozenset[str]:
        """The search parameters linking `resource_type` to the compartment (empty if none)."""
        return self._params.get(resource_type, frozenset())

    def patients_of(self, resource: dict[str, Any]) -> frozenset[str]:
        """Ids of the patients whose compartment holds `resource`; empty for shared types,
        unknown types and resources naming no patient of this server."""
        if not isinstance(resource, dict):
            return frozenset()
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in self._members:
            return frozenset()
        found: set[str] = set()
        if rtype == "Patient":
            own = resource.get("id")
            if isinstance(own, str) and own:
                found.add(own)
        wanted = self._params.get(rtype, frozenset())
        if wanted:
            # the rows the store indexes for the compartment parameters: the two agree
            out = self.indexer.rows(resource, only=wanted)
            found.update(row.target_id for row in out.reference
                         if row.target_type == "Patient" and row.target_id)
        return frozenset(found)

    def contains(self, resource: dict[str, Any], patient_id: str) -> bool:
        """Whether `resource` is in the compartment of `Patient/<patient_id>`."""
        return patient_id in self.patients_of(resource)
