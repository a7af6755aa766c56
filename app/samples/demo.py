"""The demo hospital `make run` loads at first start: a small synthetic 三甲 hospital.

Loaded through the same transaction Bundles as any client's data (validation, indexing, audit),
only when the store holds no Patient yet, so a restart or real data is never touched.
"""

from __future__ import annotations

import orjson

from app.fhir.bundles import BundleProcessor
from app.fhir.interactions import Call, FhirService
from app.pipeline.hooks import Principal
from app.samples.hospital import HospitalGenerator, transaction_bundle
from app.search.query import parse_search

DEMO_PATIENTS = 50
DEMO_OBSERVATIONS_PER_PATIENT = 40
BUNDLE_SIZE = 500


async def load_demo_if_empty(service: FhirService) -> int:
    """Load the demo hospital into an empty store; returns how many resources were written."""
    query, _ = parse_search(("Patient",), [("_count", "1"), ("_total", "accurate")],
                            service.parse_ctx)
    if (await service.store.search(query)).total:
        return 0
    call = Call(Principal(subject="system/demo-loader", anonymous=False),
                prefer_return="minimal")
    bundles = BundleProcessor(service)
    written = 0
    batch: list[dict[str, object]] = []
    population = HospitalGenerator().population(DEMO_PATIENTS, DEMO_OBSERVATIONS_PER_PATIENT)
    for resource in population:
        batch.append(resource)
        if len(batch) >= BUNDLE_SIZE:
            await bundles.process(call, orjson.dumps(transaction_bundle(batch)))
            written += len(batch)
            batch = []
    if batch:
        await bundles.process(call, orjson.dumps(transaction_bundle(batch)))
        written += len(batch)
    return written
