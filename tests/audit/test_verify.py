"""Verification against the chain without trusting the server or its database (issue 5):
`verify_database` over a real store file and a real anvil, and `verify_event`/`verify_version`
on what the server serves."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from typing import Any

import orjson
import pytest

from app.audit.hashing import canonical_json
from app.audit.verify import (
    ChainError,
    ChainReader,
    Report,
    parameters,
    proof_extension,
    verify_database,
    verify_event,
    verify_version,
)
from app.chain.devchain import DevChain, free_loopback_port
from app.storage.sqlite_schema import RAW_SCHEMA
from tests.audit.conftest import Store, audit_event, fill


def admin(store: Store) -> sqlite3.Connection:
    """What a malicious administrator has: write access to the database file."""
    return store.conn


def verify(store: Store, **kw: Any) -> Report:
    return verify_database(store.db_path, store.keyer, ChainReader(store.rpc_url),
                           store_db=store.store_path, **kw)


def kinds(report: Report) -> list[tuple[str, str]]:
    return [(p.kind, p.subject) for p in report.problems]


def test_an_untouched_store_verifies_with_queued_entries_pending(store: Store) -> None:
    fill(store)
    files = [store.db_path, store.db_path.with_name("audit.sqlite3-wal"), store.store_path,
             store.store_path.with_name("yilian.sqlite3-wal")]
    before = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    report = verify(store)
    assert report.problems == []
    assert report.counts == {"checked": 19, "verified": 17, "pending": 2, "missing": 0,
                             "altered": 0, "extra": 0}
    assert report.ok
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == before  # read-only


def test_reads_not_sealed_yet_are_pending_and_a_range_leaves_them_out(store: Store) -> None:
    fill(store)
    raw_path = store.db_path.with_name("audit.raw.sqlite3")
    with closing(sqlite3.connect(raw_path)) as raw:
        raw.executescript(RAW_SCHEMA)
        raw.executemany("INSERT INTO audit_raw(id, recorded_ms, patient, data) "
                        "VALUES (?, ?, ?, ?)", [(f"ae-raw-{i}", 1_795_400_000_000 + i,
                                                 "pat-110101", b"[]") for i in range(3)])
        raw.commit()
    report = verify(store)
    assert report.ok and report.counts["pending"] == 2 + 3
    assert verify(store, from_seq=1).counts["pending"] == 2  # raw ones have no seq yet


def test_an_audit_event_altered_in_the_database_is_reported(store: Store) -> None:
    info = fill(store)
    seq = info["seqs"][4]
    # the admin hides who read 王芳's record: another doctor's name in the stored AuditEvent
    admin(store).execute("UPDATE audit SET body = replace(body, '李强', '陈静') WHERE seq = ?",
                         (seq,))
    report = verify(store)
    (problem,) = report.problems
    assert (problem.kind, problem.seq) == ("altered", seq)
    assert problem.subject == "AuditEvent/ae-000004"
    assert report.counts["altered"] == 1 and report.counts["verified"] == 16


def test_an_audit_event_altered_with_its_queued_entry_is_caught_by_the_chain(
        store: Store) -> None:
    info = fill(store)
    seq = info["seqs"][1]
    conn = admin(store)
    body = orjson.loads(conn.execute("SELECT body FROM audit WHERE seq = ?", (seq,)).fetchone()[0])
    body["recorded"] = body["recorded"].replace("09:15", "03:15")
    # a careful admin also recomputes the entry column: the chain still has the original hash
    from app.audit.hashing import entry_hash
    entry = conn.execute("SELECT entry FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
    conn.execute("UPDATE audit SET body = ?, entry = ? WHERE seq = ?",
                 (canonical_json(body), entry_hash(body) + bytes(entry)[32:], seq))
    report = verify(store)
    (problem,) = report.problems
    assert (problem.kind, problem.seq) == ("altered", seq)
    assert "entry hash differs from the one on chain" in problem.reason


def test_a_resource_version_altered_in_the_database_is_reported(store: Store) -> None:
    fill(store)
    # 张伟's white-cell count changed after the fact
    admin(store).execute(
        "UPDATE history SET body = replace(body, '6.5', '4.5') WHERE rid = (SELECT rid FROM "
        "resource WHERE type = 'Observation' AND id = 'obs-wbc-20261122') AND version = 1")
    report = verify(store)
    assert kinds(report) == [("altered", "Observation/obs-wbc-20261122/_history/1")]
    assert report.counts["verified"] == 16


def test_a_resource_version_deleted_from_history_is_reported(store: Store) -> None:
    fill(store)
    admin(store).execute(
        "DELETE FROM history WHERE rid = (SELECT rid FROM resource WHERE id = 'p-liuyang')")
    report = verify(store)
    assert kinds(report) == [("altered", "Patient/p-liuyang/_history/1")]
    assert "no longer in the history table" in report.problems[0].reason


def test_an_anchored_audit_event_deleted_from_the_database_is_an_extra_entry(
        store: Store) -> None:
    info = fill(store)
    admin(store).execute("DELETE FROM audit WHERE seq = ?", (info["seqs"][7],))
    report = verify(store)
    (problem,) = report.problems
    assert problem.kind == "extra"
    assert store.chain.writer.lower() in problem.reason
    assert report.counts["checked"] == 18 and report.counts["extra"] == 1
    # the chain read a few blocks per eth_getLogs call finds the same
    assert verify(store, log_chunk=2).problems == report.problems


def test_a_whole_batch_deleted_from_the_database_is_still_an_extra_entry(store: Store) -> None:
    info = fill(store)
    conn = admin(store)
    conn.execute("DELETE FROM audit WHERE batch = ?", (info["batches"][1],))
    conn.execute("DELETE FROM chain_batch WHERE id = ?", (info["batches"][1],))
    report = verify(store)  # the other batch names the AuditLog and our writer
    assert [p.kind for p in report.problems] == ["extra"] * 4


def test_every_batch_deleted_is_found_through_the_consortiums_addresses(store: Store) -> None:
    fill(store)
    conn = admin(store)
    conn.execute("DELETE FROM audit WHERE batch IS NOT NULL")
    conn.execute("DELETE FROM chain_batch WHERE kind = 'access'")
    assert verify(store).problems == []  # nothing in the database points at the chain any more
    report = verify(store, audit_logs=[store.chain.audit_log.address],
                    writers=[store.chain.writer])
    assert [p.kind for p in report.problems] == ["extra"] * 10


def test_a_row_whose_batch_points_at_the_wrong_transaction_is_missing(store: Store) -> None:
    info = fill(store)
    conn = admin(store)
    version_tx = conn.execute("SELECT tx_hash FROM chain_batch WHERE kind = 'version'").fetchone()
    conn.execute("UPDATE chain_batch SET tx_hash = ? WHERE id = ?",
                 (version_tx[0], info["batches"][1]))
    report = verify(store)
    assert [p.kind for p in report.problems] == ["missing"] * 4
    assert {p.seq for p in report.problems} == set(info["seqs"][6:])


def test_a_row_whose_transaction_the_chain_never_saw_is_missing(store: Store) -> None:
    info = fill(store)
    admin(store).execute("UPDATE chain_batch SET tx_hash = ? WHERE id = ?",
                         ("0x" + "ab" * 32, info["batches"][0]))
    report = verify(store)
    assert [p.kind for p in report.problems] == ["missing"] * 6
    assert "no such transaction on this chain" in report.problems[0].reason


def test_a_consent_decision_altered_in_the_outbox_is_reported(store: Store) -> None:
    fill(store)
    admin(store).execute("UPDATE chain_outbox SET payload = substr(payload, 1, 96) || x'03' || "
                         "substr(payload, 98) WHERE kind = 'consent'")
    report = verify(store)
    assert kinds(report) == [("altered", "Consent/c-zhangwei-his/_history/1")]


def test_another_hospitals_entries_in_the_same_audit_log_are_not_ours(store: Store) -> None:
    fill(store)
    west_china = Store(store.var_dir.parent / "west-china", store.keyer, store.w3, store.chain)
    seq = west_china.audit(audit_event(store.keyer, 40, "p-huaxi-001"))
    west_china.anchor_access([seq], sender=store.chain.other_writer)
    report = verify(store)
    assert report.problems == [] and report.foreign == 1


def test_a_range_checks_only_its_rows(store: Store) -> None:
    info = fill(store)
    admin(store).execute("UPDATE audit SET body = replace(body, '李强', '陈静') WHERE seq = ?",
                         (info["seqs"][0],))
    report = verify(store, from_seq=info["seqs"][2], to_seq=info["seqs"][5])
    assert report.problems == []
    assert report.counts["checked"] == 4 + 7  # 4 audit rows + 6 versions + 1 consent decision


def test_an_unreachable_chain_is_a_clear_error(store: Store) -> None:
    fill(store)
    url = f"http://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(ChainError, match=f"eth_chainId failed on {url}"):
        verify_database(store.db_path, store.keyer, ChainReader(url, timeout=2),
                        store_db=store.store_path)


# --- what the server serves ---------------------------------------------------------------

def served(store: Store, seq: int) -> dict[str, Any]:
    """The AuditEvent as `GET /fhir/AuditEvent/{id}` answers once it is anchored."""
    body = orjson.loads(store.conn.execute("SELECT body FROM audit WHERE seq = ?",
                                           (seq,)).fetchone()[0])
    p = store.proof(seq)
    body["meta"] = {"versionId": "2", "lastUpdated": "2026-11-23T01:15:09.902Z"}
    body["extension"] = [*body.get("extension", []),
                         proof_extension(p["chainId"], p["contract"], p["txHash"],
                                         p["blockNumber"], p["logIndex"])]
    return orjson.loads(orjson.dumps(body))


def test_a_served_audit_event_verifies_and_a_one_character_change_does_not(
        store: Store) -> None:
    info = fill(store)
    rpc = ChainReader(store.rpc_url)
    event = served(store, info["seqs"][5])
    verdict = verify_event(event, rpc, audit_log=store.chain.audit_log.address)
    assert verdict.verified, verdict.reason
    assert verdict.proof is not None and verdict.proof["logIndex"] == store.proof(
        info["seqs"][5])["logIndex"]

    event["agent"][1]["who"]["identifier"]["value"] = "his-emt"  # one character
    verdict = verify_event(event, rpc)
    assert not verdict.verified
    assert verdict.reason is not None
    assert verdict.reason.startswith("altered: entry hash differs from the one on chain")


def test_a_served_audit_event_of_no_patient_and_of_an_action_verifies(store: Store) -> None:
    info = fill(store)
    verdict = verify_event(served(store, info["seqs"][9]),
                           ChainReader(store.rpc_url))
    assert verdict.verified, verdict.reason
    assert verdict.proof is not None and verdict.proof["patientKey"] == "0x" + "00" * 32


def test_an_audit_event_claiming_another_patient_or_action_is_caught(store: Store) -> None:
    info = fill(store)
    rpc = ChainReader(store.rpc_url)
    event = served(store, info["seqs"][3])
    event["action"] = "U"
    assert not verify_event(event, rpc).verified  # the action is in the entry hash too
    event = served(store, info["seqs"][3])
    proof = next(e for e in event["extension"] if e["url"].endswith("chain-proof"))
    proof["extension"][4]["valueUnsignedInt"] += 1  # the neighbour's log
    verdict = verify_event(event, rpc)
    assert not verdict.verified and verdict.reason is not None
    assert "entry hash differs" in verdict.reason


def test_proofs_that_lead_nowhere_say_why(store: Store) -> None:
    info = fill(store)
    rpc = ChainReader(store.rpc_url)
    pending = orjson.loads(store.conn.execute("SELECT body FROM audit WHERE seq = ?",
                                              (info["pending"][0],)).fetchone()[0])
    assert verify_event(pending, rpc).reason == (
        "not anchored yet: the AuditEvent carries no chain proof")

    event = served(store, info["seqs"][0])
    proof = next(e for e in event["extension"] if e["url"].endswith("chain-proof"))
    proof["extension"][2]["valueString"] = "0x" + "cd" * 32
    reason = verify_event(event, rpc).reason
    assert reason is not None and reason.startswith("no such transaction on this chain")

    event = served(store, info["seqs"][0])
    proof = next(e for e in event["extension"] if e["url"].endswith("chain-proof"))
    proof["extension"][0]["valueUnsignedInt"] = 1
    reason = verify_event(event, rpc).reason
    assert reason == "the proof is for chain 1, the RPC endpoint serves chain 31337"

    event = served(store, info["seqs"][0])
    verdict = verify_event(event, rpc, audit_log=store.chain.anchor.address)
    assert not verdict.verified and "not the AuditLog" in str(verdict.reason)

    # a log of the same transaction that is not an access entry: the closing BatchRecorded
    event = served(store, info["seqs"][5])
    proof = next(e for e in event["extension"] if e["url"].endswith("chain-proof"))
    proof["extension"][4]["valueUnsignedInt"] += 1
    reason = verify_event(event, rpc).reason
    assert reason is not None and "is not an AccessRecorded of the AuditLog" in reason


def test_a_resource_version_verifies_by_its_bytes(store: Store) -> None:
    fill(store)
    rpc = ChainReader(store.rpc_url)
    ref = "Observation/obs-wbc-20261122/_history/2"
    body = bytes(store.conn.execute(
        "SELECT h.body FROM history h JOIN resource r ON r.rid = h.rid WHERE r.id = ? "
        "AND h.version = 2", ("obs-wbc-20261122",)).fetchone()[0])
    key = store.keyer.version("Observation", "obs-wbc-20261122", 2)
    verdict = verify_version("Observation", "obs-wbc-20261122", 2, body,
                             store.version_proof(ref), key, rpc)
    assert verdict.verified, verdict.reason

    verdict = verify_version("Observation", "obs-wbc-20261122", 2, body.replace(b"6.8", b"6.9"),
                             store.version_proof(ref), key, rpc)
    assert not verdict.verified and str(verdict.reason).startswith(
        "altered: content hash of Observation/obs-wbc-20261122/_history/2 differs")

    other = store.keyer.version("Observation", "obs-wbc-20261122", 1)
    verdict = verify_version("Observation", "obs-wbc-20261122", 1, body,
                             store.version_proof(ref), other, rpc)
    assert not verdict.verified and "another resource version" in str(verdict.reason)


def test_verdicts_become_fhir_parameters(store: Store) -> None:
    info = fill(store)
    rpc = ChainReader(store.rpc_url)
    params = parameters(verify_event(served(store, info["seqs"][2]), rpc))
    assert params["resourceType"] == "Parameters"
    by_name = {p["name"]: p for p in params["parameter"]}
    assert by_name["verified"] == {"name": "verified", "valueBoolean": True}
    assert "reason" not in by_name
    parts = {p["name"]: p for p in by_name["proof"]["part"]}
    assert parts["chainId"]["valueUnsignedInt"] == 31337
    assert parts["txHash"]["valueString"] == store.proof(info["seqs"][2])["txHash"]
    assert set(parts) == {"chainId", "contract", "txHash", "blockNumber", "logIndex",
                          "entryHash", "patientKey"}

    params = parameters(verify_event(audit_event(store.keyer, 99, "p-zhangwei"), rpc))
    assert params["parameter"] == [
        {"name": "verified", "valueBoolean": False},
        {"name": "reason",
         "valueString": "not anchored yet: the AuditEvent carries no chain proof"}]


def test_a_chain_reset_under_the_proofs_is_detected(store: Store, tmp_path: Any) -> None:
    info = fill(store)
    with DevChain() as fresh:  # same chain id, none of our transactions
        verdict = verify_event(served(store, info["seqs"][0]), ChainReader(fresh.url))
        assert not verdict.verified
        assert str(verdict.reason).startswith("no such transaction on this chain")
        report = verify_database(store.db_path, store.keyer, ChainReader(fresh.url),
                                 store_db=store.store_path)
        assert report.counts["missing"] == 17 and report.counts["verified"] == 0


def test_a_malformed_proof_is_a_verdict_not_a_chain_error(store: Store) -> None:
    info = fill(store)
    rpc = ChainReader(store.rpc_url)
    for index, value in ((2, "0x12zz"), (1, "北京协和医院"), (3, -1), (4, "七")):
        event = served(store, info["seqs"][0])
        proof = next(e for e in event["extension"] if e["url"].endswith("chain-proof"))
        part = proof["extension"][index]
        part.pop(next(k for k in part if k.startswith("value")))
        part["valueString" if isinstance(value, str) else "valueInteger"] = value
        verdict = verify_event(event, rpc)
        assert not verdict.verified
        assert str(verdict.reason).startswith(f"chain-proof '{part['url']}' must be")


def test_a_consent_altered_in_the_database_is_reported_twice(store: Store) -> None:
    fill(store)
    # the admin turns 张伟's permit into a deny after the fact
    admin(store).execute(
        "UPDATE history SET body = replace(body, '\"permit\"', '\"deny\"') WHERE rid = "
        "(SELECT rid FROM resource WHERE type = 'Consent')")
    report = verify(store)
    assert [p.kind for p in report.problems] == ["altered", "altered"]
    version, decision = report.problems
    assert "content hash" in version.reason
    assert "consent decision recomputed from the stored Consent" in decision.reason
