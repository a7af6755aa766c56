"""AuditLog: role-gated, append-only batches of access entries, each its own log (issue 5)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from tests.chain.conftest import Nodes, expect_revert, keyed, send

ACTIONS = {"C": 1, "R": 2, "U": 3, "D": 4, "E": 5}
# 身份证号 with valid check digits (GB 11643-1999).
PATIENT_IDS = ("11010519491231002X", "440524188001010014", "510104198507120022")


@dataclass(frozen=True)
class Entry:
    entry_hash: bytes
    patient_hash: bytes
    action: int

    def packed(self) -> bytes:
        return self.entry_hash + self.patient_hash + bytes([self.action])


def entries(n: int, start: int = 0) -> list[Entry]:
    """Accesses by the 门诊 doctors of 北京协和医院 to the records of three patients."""
    out = []
    for i in range(start, start + n):
        patient = keyed(f"Patient/{PATIENT_IDS[i % 3]}")
        action = "CRUDE"[i % 5]
        canonical = (f'{{"agent":"Practitioner/医生{i % 40:03d}","entity":"Observation/血常规{i}",'
                     f'"action":"{action}","recorded":"2026-11-23T16:{i % 60:02d}:00+08:00",'
                     f'"purposeOfUse":"TREAT"}}')
        out.append(Entry(Web3.keccak(text=canonical), patient, ACTIONS[action]))
    return out


def pack(batch: list[Entry]) -> bytes:
    return b"".join(e.packed() for e in batch)


def test_each_entry_of_a_batch_is_its_own_log_with_the_fields_that_were_sent(
        w3: Web3, audit_log: Contract, nodes: Nodes) -> None:
    batch = entries(25)
    receipt = send(w3, audit_log.functions.recordBatch(pack(batch)), nodes.peking_union)

    recorded = audit_log.events.AccessRecorded().process_receipt(receipt, errors=DISCARD)
    assert [(e.args.entryHash, e.args.patientHash, e.args.action) for e in recorded] == [
        (b.entry_hash, b.patient_hash, b.action) for b in batch]
    # Anyone holding an entry finds its log by topics alone: [patientHash, entryHash].
    raw = [log for log in receipt["logs"] if len(log["topics"]) == 2]
    assert [(bytes(log["topics"][0]), bytes(log["topics"][1])) for log in raw] == [
        (b.patient_hash, b.entry_hash) for b in batch]
    assert all(log["address"] == audit_log.address for log in raw)

    (closing,) = audit_log.events.BatchRecorded().process_receipt(receipt, errors=DISCARD)
    assert (closing.args.writer, closing.args.firstSeq, closing.args.entries) == (
        nodes.peking_union, 0, 25)
    assert closing.logIndex == raw[-1]["logIndex"] + 1


def test_entries_are_numbered_across_batches_and_writers(
        w3: Web3, audit_log: Contract, nodes: Nodes) -> None:
    send(w3, audit_log.functions.recordBatch(pack(entries(10))), nodes.peking_union)
    receipt = send(w3, audit_log.functions.recordBatch(pack(entries(7, 10))), nodes.west_china)
    (closing,) = audit_log.events.BatchRecorded().process_receipt(receipt, errors=DISCARD)
    assert (closing.args.writer, closing.args.firstSeq, closing.args.entries) == (
        nodes.west_china, 10, 7)
    assert audit_log.functions.entryCount().call() == 17


def test_a_node_without_the_writer_role_cannot_record(
        audit_log: Contract, nodes: Nodes) -> None:
    name, args = expect_revert(audit_log, audit_log.functions.recordBatch(pack(entries(1))),
                               nodes.outsider)
    assert name == "AccessControlUnauthorizedAccount"
    assert args == (nodes.outsider, audit_log.functions.WRITER_ROLE().call())


def test_the_admin_is_not_a_writer_unless_granted(audit_log: Contract, nodes: Nodes) -> None:
    name, args = expect_revert(audit_log, audit_log.functions.recordBatch(pack(entries(1))),
                               nodes.admin)
    assert name == "AccessControlUnauthorizedAccount"
    assert args[0] == nodes.admin


def test_a_revoked_writer_can_no_longer_record(
        w3: Web3, audit_log: Contract, nodes: Nodes) -> None:
    role = audit_log.functions.WRITER_ROLE().call()
    send(w3, audit_log.functions.revokeRole(role, nodes.west_china), nodes.admin)
    name, _ = expect_revert(audit_log, audit_log.functions.recordBatch(pack(entries(1))),
                            nodes.west_china)
    assert name == "AccessControlUnauthorizedAccount"


def test_only_the_admin_grants_the_writer_role(audit_log: Contract, nodes: Nodes) -> None:
    role = audit_log.functions.WRITER_ROLE().call()
    name, args = expect_revert(audit_log, audit_log.functions.grantRole(role, nodes.outsider),
                               nodes.peking_union)
    assert name == "AccessControlUnauthorizedAccount"
    assert args == (nodes.peking_union, bytes(32))  # DEFAULT_ADMIN_ROLE


def test_a_batch_over_the_limit_reverts_naming_its_size_and_the_limit(
        audit_log: Contract, nodes: Nodes) -> None:
    limit = audit_log.functions.MAX_BATCH_ENTRIES().call()
    name, args = expect_revert(audit_log, audit_log.functions.recordBatch(pack(entries(limit + 1))),
                               nodes.peking_union)
    assert (name, args) == ("BatchTooLarge", (limit + 1, limit))


def test_a_batch_of_partial_entries_reverts_naming_its_length(
        audit_log: Contract, nodes: Nodes) -> None:
    name, args = expect_revert(audit_log, audit_log.functions.recordBatch(pack(entries(2))[:-1]),
                               nodes.peking_union)
    assert (name, args) == ("BatchNotWholeEntries", (129, 65))


def test_an_empty_batch_reverts(audit_log: Contract, nodes: Nodes) -> None:
    name, _ = expect_revert(audit_log, audit_log.functions.recordBatch(b""), nodes.peking_union)
    assert name == "EmptyBatch"


def test_nothing_can_remove_or_rewrite_an_entry(audit_log: Contract) -> None:
    """Append-only by construction: besides recordBatch, only AccessControl's role functions
    change state."""
    writers = {f["name"] for f in audit_log.abi
               if f["type"] == "function" and f["stateMutability"] not in ("view", "pure")}
    assert writers == {"recordBatch", "grantRole", "revokeRole", "renounceRole"}


GAS_PER_ENTRY_LIMIT = 3_000


@pytest.mark.parametrize("size", [100, 500, 1000])
def test_gas_per_entry_stays_within_3000(
        w3: Web3, audit_log: Contract, nodes: Nodes, size: int,
        record_property: pytest.RecordProperty) -> None:
    # A warm-up batch first, so the measured one pays the steady-state cost of entryCount.
    send(w3, audit_log.functions.recordBatch(pack(entries(1, 10_000))), nodes.peking_union)
    receipt = send(w3, audit_log.functions.recordBatch(pack(entries(size))), nodes.peking_union)
    per_entry = receipt["gasUsed"] / size
    record_property("gas_per_entry", per_entry)
    print(f"\nbatch {size}: {receipt['gasUsed']} gas, {per_entry:.1f} gas/entry")
    assert per_entry <= GAS_PER_ENTRY_LIMIT
