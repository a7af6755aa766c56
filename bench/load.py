"""The benchmark data set: the hospital population loaded through HTTP transaction Bundles.

Resources come from `app.samples.hospital.HospitalGenerator.population` in dependency order and
go to the server as `transaction` Bundles (FHIR R4 §3.1.0.11) of PUT entries, several Bundles in
flight on parallel connections; the time this takes is the sustained-ingest measurement. A
loaded store is kept under `bench/.cache/<key>/` with a manifest of what is in it (patient ids,
the codes and dates each patient's Observations have, a sample of Observation ids), so later
runs skip the load. The key covers the population's size and seed and a hash of the generator
and of the store schema, so a change to either loads afresh.
"""

from __future__ import annotations

import hashlib
import http.client
import queue
import random
import shutil
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from app.samples.hospital import LOINC, HospitalGenerator, transaction_bundle
from bench.server import HOST, REPO, yilian_server

BUNDLE_SIZE = 1000
OBSERVATION_SAMPLE = 20_000
# Files whose change makes a cached store stale: what is generated and how it is stored.
KEY_SOURCES = ("app/samples/hospital.py", "app/storage/sqlite_schema.py")
TRANSACTION_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
                       "Prefer": "return=minimal"}


@dataclass(frozen=True)
class DatasetSpec:
    patients: int
    observations_per_patient: int
    seed: int = 20261123

    def key(self) -> str:
        digest = hashlib.sha256()
        for rel in KEY_SOURCES:
            path = REPO / rel
            digest.update(rel.encode())
            digest.update(path.read_bytes() if path.exists() else b"-")
        return (f"hospital-p{self.patients}-o{self.observations_per_patient}-s{self.seed}-"
                f"{digest.hexdigest()[:10]}")

    def resources(self) -> Iterator[dict[str, Any]]:
        return HospitalGenerator(self.seed).population(
            patients=self.patients, observations_per_patient=self.observations_per_patient)


@dataclass
class IngestStats:
    resources: int
    bundles: int
    connections: int
    seconds: float
    resources_per_s: float
    bundle_seconds_median: float
    bundle_seconds_max: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class IngestError(RuntimeError):
    pass


@dataclass
class PopulationIndex:
    """What a loaded population contains, for building request mixes that hit existing data."""

    counts: Counter[str] = field(default_factory=Counter)
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    observation_ids: list[str] = field(default_factory=list)
    _seen_obs: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(7))

    def add(self, resource: dict[str, Any]) -> None:
        rtype = resource["resourceType"]
        self.counts[rtype] += 1
        if rtype == "Patient":
            self.patients[resource["id"]] = {"codes": set(), "first": None, "last": None}
        elif rtype == "Observation":
            self._add_observation(resource)

    def _add_observation(self, obs: dict[str, Any]) -> None:
        # Reservoir sampling keeps a uniform sample of ids without holding a million of them.
        self._seen_obs += 1
        if len(self.observation_ids) < OBSERVATION_SAMPLE:
            self.observation_ids.append(obs["id"])
        else:
            j = self._rng.randrange(self._seen_obs)
            if j < OBSERVATION_SAMPLE:
                self.observation_ids[j] = obs["id"]
        pid = obs["subject"]["reference"].removeprefix("Patient/")
        info = self.patients.get(pid)
        if info is None:
            return
        for coding in obs["code"]["coding"]:
            if coding.get("system") == LOINC:
                info["codes"].add(f"{LOINC}|{coding['code']}")
        day = obs["effectiveDateTime"][:10]
        info["first"] = day if info["first"] is None else min(info["first"], day)
        info["last"] = day if info["last"] is None else max(info["last"], day)

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts),
                "patients": [{"id": pid, "codes": sorted(info["codes"]), "first": info["first"],
                              "last": info["last"]} for pid, info in self.patients.items()],
                "observation_ids": self.observation_ids}


def bundles(resources: Iterable[dict[str, Any]], size: int = BUNDLE_SIZE,
            index: PopulationIndex | None = None) -> Iterator[tuple[int, bytes]]:
    """(entry count, JSON) of consecutive PUT transaction Bundles of up to `size` resources."""
    chunk: list[dict[str, Any]] = []
    for resource in resources:
        if index is not None:
            index.add(resource)
        chunk.append(resource)
        if len(chunk) == size:
            yield len(chunk), orjson.dumps(transaction_bundle(chunk))
            chunk = []
    if chunk:
        yield len(chunk), orjson.dumps(transaction_bundle(chunk))


def post_transaction(conn: http.client.HTTPConnection, body: bytes) -> float:
    """POST one transaction Bundle; returns its wall time in seconds. Raises unless 200."""
    start = time.perf_counter()
    conn.request("POST", "/fhir", body, TRANSACTION_HEADERS)
    response = conn.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise IngestError(f"transaction answered HTTP {response.status}: "
                          f"{answer[:2000].decode(errors='replace')}")
    return elapsed


def post_bundles(port: int, stream: Iterable[tuple[int, bytes]], *, connections: int,
                 time_limit_s: float, request_timeout_s: float = 900.0,
                 progress_every_s: float = 30.0, label: str = "load") -> IngestStats:
    """Send every Bundle of `stream` over `connections` parallel connections.

    Bundles are built in this thread while the sender threads post; a bounded queue keeps at
    most two Bundles per connection in memory. Stops with IngestError on the first failed
    Bundle or when `time_limit_s` passes.
    """
    work: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=2 * connections)
    stop = threading.Event()
    lock = threading.Lock()
    errors: list[BaseException] = []
    done = {"resources": 0, "bundles": 0}
    times: list[float] = []

    def sender() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=request_timeout_s)
        try:
            while not stop.is_set():
                try:
                    item = work.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is None:
                    return
                n, body = item
                elapsed = post_transaction(conn, body)
                with lock:
                    done["resources"] += n
                    done["bundles"] += 1
                    times.append(elapsed)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            stop.set()
        finally:
            conn.close()

    threads = [threading.Thread(target=sender, name=f"bench-sender-{i}", daemon=True)
               for i in range(connections)]
    start = time.perf_counter()
    deadline = start + time_limit_s
    next_progress = start + progress_every_s
    for t in threads:
        t.start()
    try:
        for item in stream:
            while not stop.is_set():
                if time.perf_counter() > deadline:
                    stop.set()
                    raise IngestError(f"{label}: not finished within {time_limit_s:.0f} s "
                                      f"({done['resources']} resources sent)")
                try:
                    work.put(item, timeout=0.5)
                    break
                except queue.Full:
                    pass
            if stop.is_set():
                break
            now = time.perf_counter()
            if now >= next_progress:
                rate = done["resources"] / (now - start)
                print(f"  {label}: {done['resources']:,} resources in {now - start:,.0f} s "
                      f"({rate:,.0f}/s)", flush=True)
                next_progress = now + progress_every_s
        for _ in threads:
            while not stop.is_set():
                try:
                    work.put(None, timeout=0.5)
                    break
                except queue.Full:
                    if time.perf_counter() > deadline:
                        stop.set()
        join_deadline = deadline + request_timeout_s
        for t in threads:
            t.join(timeout=max(0.0, join_deadline - time.perf_counter()))
    finally:
        stop.set()
    if errors:
        raise IngestError(f"{label}: {errors[0]}") from errors[0]
    if any(t.is_alive() for t in threads):
        raise IngestError(f"{label}: sender threads still busy after the time limit")
    seconds = time.perf_counter() - start
    return IngestStats(
        resources=done["resources"], bundles=done["bundles"], connections=connections,
        seconds=seconds, resources_per_s=done["resources"] / seconds if seconds else 0.0,
        bundle_seconds_median=statistics.median(times) if times else 0.0,
        bundle_seconds_max=max(times) if times else 0.0)


@dataclass
class Dataset:
    key: str
    var_dir: Path
    manifest: dict[str, Any]
    loaded_now: bool


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_dataset(spec: DatasetSpec, cache_root: Path, log_dir: Path, *, reload: bool,
                 connections: int, time_limit_s: float) -> Dataset:
    """The cached store for `spec`, loading it through the server first if needed."""
    key = spec.key()
    final = cache_root / key
    manifest_path = final / "manifest.json"
    if manifest_path.exists() and not reload:
        print(f"Data set {key}: reusing the store cached in {final}", flush=True)
        return Dataset(key, final / "var", orjson.loads(manifest_path.read_bytes()), False)
    partial = cache_root / f"{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    var_dir = partial / "var"
    var_dir.mkdir(parents=True)
    index = PopulationIndex()
    print(f"Data set {key}: loading {spec.patients:,} patients x "
          f"{spec.observations_per_patient:,} observations through HTTP transactions of "
          f"{BUNDLE_SIZE} entries on {connections} connections", flush=True)
    with yilian_server(var_dir, log_dir / "server-load.log") as server:
        stats = post_bundles(server.port, bundles(spec.resources(), index=index),
                             connections=connections, time_limit_s=time_limit_s, label="load")
    print(f"  loaded {stats.resources:,} resources in {stats.seconds:,.0f} s "
          f"({stats.resources_per_s:,.0f}/s)", flush=True)
    manifest = {"key": key, "spec": asdict(spec),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "load": stats.as_dict(), "store_bytes": dir_bytes(var_dir), **index.as_dict()}
    (partial / "manifest.json").write_bytes(orjson.dumps(manifest))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return Dataset(key, final / "var", manifest, True)


def working_copy(dataset: Dataset, dest: Path) -> Path:
    """A private copy of the cached store, so the writes of a run never change the cache."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(dataset.var_dir, dest)
    return dest


def stale_caches(cache_root: Path, keep: str) -> list[tuple[Path, int]]:
    """Cached stores of the same population for an older generator or schema (another hash
    after the same size and seed), with their sizes in bytes."""
    if not cache_root.exists():
        return []
    prefix = keep.rsplit("-", 1)[0] + "-"
    return [(p, dir_bytes(p)) for p in sorted(cache_root.iterdir())
            if p.is_dir() and p.name != keep and p.name.startswith(prefix)]
