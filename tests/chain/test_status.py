"""GET /chain/status (app/chain/status.py): answers with the chain up, down or off, never a 500."""

from __future__ import annotations

import dataclasses
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.chain.node import ChainError, ChainHandle, start_chain
from app.chain.status import build_chain_router
from app.config import Settings
from app.storage.sqlite_schema import AUDIT_SCHEMA, RAW_SCHEMA
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def dev_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, ChainHandle]]:
    settings = make_settings(tmp_path_factory.mktemp("status"), chain="dev")
    dev, handle = start_chain(settings)
    assert dev is not None
    yield settings, handle
    dev.stop()


def _status(settings: Settings, db: Path,
            getter: Callable[[], ChainHandle | None]) -> tuple[dict[str, Any], dict[str, str]]:
    app = FastAPI()
    app.include_router(build_chain_router(settings, db, getter))
    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.get("/chain/status")
    assert reply.status_code == 200, reply.text
    assert reply.headers["cache-control"] == "no-store"
    return reply.json(), dict(reply.headers)


def _store_with_queue(path: Path, now_ms: int) -> Path:
    """An outbox as the server and the anchoring worker leave it: entries waiting, a batch in
    flight, two confirmed batches (access and version)."""
    con = sqlite3.connect(path)
    con.executescript(AUDIT_SCHEMA)
    con.executemany(
        "INSERT INTO chain_batch(id, kind, epoch, chain_id, contract, nonce, raw_tx, tx_hash, "
        "state, entries, block, first_log, created_ms, mined_ms) "
        "VALUES (?, ?, 1, 31337, '0x10C766EB073b6E388e4BC5cC419F3077Ce937cb6', ?, x'02', ?, ?, "
        "?, ?, ?, ?, ?)",
        [(1, "access", 6, "0x" + "a1" * 32, "confirmed", 2, 7, 0, now_ms - 59500, now_ms - 59000),
         (2, "version", 7, "0x" + "b2" * 32, "confirmed", 1, 9, 0, now_ms - 27500, now_ms - 27000),
         (3, "access", 8, "0x" + "c3" * 32, "sent", 2, None, None, now_ms - 7000, None)])
    audit = [  # (recorded, batch, pos)
        (now_ms - 60000, 1, 0), (now_ms - 59900, 1, 1),
        (now_ms - 8000, 3, 0), (now_ms - 7900, 3, 1),
        (now_ms - 5000, None, None), (now_ms - 4000, None, None), (now_ms - 3000, None, None)]
    con.executemany(
        "INSERT INTO audit(id, recorded_ms, patient, action, outcome, agent, client, body, "
        "entry, batch, pos) VALUES (?, ?, 'Patient/zhang-san', 'R', '0', "
        "'Practitioner/li-yisheng', 'his-client', ?, ?, ?, ?)",
        [(f"ae-{i}", recorded, b'{"resourceType":"AuditEvent"}', bytes(65), batch, pos)
         for i, (recorded, batch, pos) in enumerate(audit)])
    con.executemany(
        "INSERT INTO chain_outbox(kind, ref, payload, recorded_ms, batch, pos) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [("version", "Patient/zhang-san/_history/1", bytes(64), now_ms - 30000, 2, 0),
         ("version", "Observation/xuetang-1/_history/1", bytes(64), now_ms - 2000, None, None),
         ("version", "Observation/xuetang-1/_history/2", bytes(64), now_ms - 1500, None, None),
         ("consent", "Consent/smart-app-1/_history/1", bytes(137), now_ms - 1000, None, None)])
    con.commit()
    con.close()
    return path


def test_status_with_the_chain_up_shows_the_deployment_and_the_queue(
        dev_chain: tuple[Settings, ChainHandle], tmp_path: Path) -> None:
    settings, handle = dev_chain
    db = _store_with_queue(tmp_path / "yilian.sqlite3", int(time.time() * 1000))
    doc, _ = _status(settings, db, lambda: handle)
    assert doc["chain"] == "dev"
    assert doc["chain_id"] == 31337
    assert doc["rpc_url"] == handle.rpc_url
    assert doc["contracts"] == handle.contracts
    assert doc["epoch"] == 1
    assert doc["reachable"] is True
    assert doc["latest_block"] >= 6
    assert doc["outbox"] == {"access": 3, "version": 2, "consent": 1}
    assert doc["outbox_total"] == 6
    assert doc["batches_sent"] == 1
    assert doc["last_confirmed_block"] == 9
    # the oldest unanchored entry is the first of the batch still in flight
    assert 8.0 <= doc["anchoring_lag_seconds"] < 12.0
    assert doc["recorded_to_mined_seconds"] == {"median": 2.0, "max": 3.0, "batches": 2}
    assert "error" not in doc


def test_reads_not_sealed_yet_count_as_waiting_accesses_and_set_the_lag(
        dev_chain: tuple[Settings, ChainHandle], tmp_path: Path) -> None:
    settings, handle = dev_chain
    now_ms = int(time.time() * 1000)
    db = tmp_path / "audit.sqlite3"
    con = sqlite3.connect(db)
    con.executescript(AUDIT_SCHEMA)
    con.close()
    raw = sqlite3.connect(tmp_path / "audit.raw.sqlite3")
    raw.executescript(RAW_SCHEMA)
    raw.executemany("INSERT INTO audit_raw(id, recorded_ms, patient, data) VALUES (?, ?, ?, ?)",
                    [("ae-r1", now_ms - 7000, "zhang-san", b"[]"),
                     ("ae-r2", now_ms - 100, None, b"[]")])
    raw.commit()
    raw.close()
    doc, _ = _status(settings, db, lambda: handle)
    assert doc["outbox"]["access"] == 2 and doc["unsealed"] == 2
    assert doc["outbox_total"] == 2
    assert 6.0 <= doc["anchoring_lag_seconds"] < 10.0


def test_status_of_an_empty_store_has_no_lag(dev_chain: tuple[Settings, ChainHandle],
                                             tmp_path: Path) -> None:
    settings, handle = dev_chain
    con = sqlite3.connect(tmp_path / "empty.sqlite3")
    con.executescript(AUDIT_SCHEMA)
    con.close()
    doc, _ = _status(settings, tmp_path / "empty.sqlite3", lambda: handle)
    assert doc["outbox_total"] == 0 and doc["anchoring_lag_seconds"] == 0
    assert doc["recorded_to_mined_seconds"] == {"median": None, "max": None, "batches": 0}
    assert doc["last_confirmed_block"] is None


def test_status_with_the_chain_down_says_unreachable_within_the_timeout(
        dev_chain: tuple[Settings, ChainHandle], tmp_path: Path) -> None:
    settings, handle = dev_chain
    db = _store_with_queue(tmp_path / "yilian.sqlite3", int(time.time() * 1000))
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        hung = dataclasses.replace(handle, rpc_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        doc, _ = _status(settings, db, lambda: hung)
        assert time.monotonic() - started < 4.0
    assert doc["reachable"] is False and doc["latest_block"] is None
    assert doc["outbox_total"] == 6 and doc["contracts"] == handle.contracts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    doc, _ = _status(settings, db, lambda: dataclasses.replace(handle, rpc_url=closed))
    assert doc["reachable"] is False and doc["batches_sent"] == 1


def test_status_with_the_chain_off_still_counts_the_audit_trail(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, chain="off")
    db = _store_with_queue(tmp_path / "yilian.sqlite3", int(time.time() * 1000))

    def never() -> ChainHandle | None:
        raise AssertionError("the handle is not asked for with the chain off")

    doc, _ = _status(settings, db, never)
    assert doc["chain"] == "off"
    assert doc["reachable"] is False and doc["chain_id"] is None and doc["contracts"] == {}
    assert doc["outbox"]["access"] == 3


def test_status_never_fails_on_a_broken_deployment_or_a_missing_store(
        dev_chain: tuple[Settings, ChainHandle], tmp_path: Path) -> None:
    settings, _ = dev_chain

    def broken() -> ChainHandle | None:
        raise ChainError("var/chain/deployment.json lacks ['epoch']")

    doc, _ = _status(settings, tmp_path / "not-there.sqlite3", broken)
    assert doc["reachable"] is False and doc["epoch"] is None
    assert "deployment.json" in doc["error"]
    assert doc["outbox_total"] == 0
    (tmp_path / "garbage.sqlite3").write_bytes(b"\xe5\x8c\xbb\xe9\x93\xbe" * 1000)
    doc, _ = _status(settings, tmp_path / "garbage.sqlite3", lambda: None)
    assert doc["error"].startswith("outbox:") and doc["outbox_total"] == 0


def test_status_never_shows_rpc_credentials(dev_chain: tuple[Settings, ChainHandle],
                                            tmp_path: Path) -> None:
    settings, handle = dev_chain
    secret = dataclasses.replace(
        handle, rpc_url=f"http://hospital:s3cret@127.0.0.1:{_closed_port()}/v3/apikey0123")
    app = FastAPI()
    app.include_router(build_chain_router(settings, tmp_path / "none.sqlite3", lambda: secret))
    with TestClient(app) as client:
        text = client.get("/chain/status").text
    assert "s3cret" not in text and "apikey0123" not in text and "hospital" not in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
