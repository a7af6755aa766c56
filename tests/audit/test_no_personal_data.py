"""Nothing personal on chain (issue 5): every block, transaction input and log of a chain is
searched for patients' and doctors' names, 身份证号, phone numbers and 病案号 — as UTF-8, as GBK,
as hex text, and as plain (unkeyed) SHA-256 and keccak-256 of each of those encodings.

`scan_chain` is reusable: point it at the chain of a server that has served realistic traffic by
setting YILIAN_SCAN_CHAIN_URL (and optionally YILIAN_SCAN_NEEDLES_FILE, one needle per line;
default: the people of the demo hospital `make run` loads). The tests below also prove the scan
can fail: it finds a planted plain name and a plain SHA-256 of an ID number.

A needle shorter than 8 bytes (a two-character name in GBK is 4 bytes) can occur by chance in
megabytes of random hashes; each finding carries the number of chance matches expected over the
bytes scanned, and only findings whose chance is below CHANCE_LIMIT fail the test (the others
are listed in the failure message of a real finding and printed).
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from web3 import HTTPProvider, Web3
from web3.types import Wei

from app.chain.devchain import DevChain
from tests.audit.conftest import (
    HOSPITAL,
    PATIENTS,
    PRACTITIONERS,
    Store,
    deploy_all,
    fill,
    patient_resource,
)

CHANCE_LIMIT = 0.01
_SEPARATOR = b"\xff\xfe\xfd\xfc\xff"  # never inside UTF-8, GBK or hex text


@dataclass(frozen=True)
class Finding:
    needle: str
    form: str  # utf-8 | gbk | hex(utf-8) | sha256(gbk) | keccak(utf-8) | ...
    where: str  # "block 12 tx 0x… input" | "block 12 log 3 of 0x…" | "block 12 extraData"
    chance: float  # matches expected by chance over the scanned bytes

    def __str__(self) -> str:
        return f"{self.needle!r} as {self.form} in {self.where} (chance {self.chance:.2g})"


def needle_forms(needle: str) -> Iterator[tuple[str, bytes]]:
    """Every form in which a careless system could have put `needle` on chain."""
    encodings = [("utf-8", needle.encode())]
    try:
        gbk = needle.encode("gbk")
    except UnicodeEncodeError:
        gbk = encodings[0][1]
    if gbk != encodings[0][1]:
        encodings.append(("gbk", gbk))
    for name, raw in encodings:
        yield name, raw
        yield f"hex({name})", raw.hex().encode()
        yield f"HEX({name})", raw.hex().upper().encode()
        for hash_name, digest in (("sha256", hashlib.sha256(raw).digest()),
                                  ("keccak", keccak(raw))):
            yield f"{hash_name}({name})", digest
            yield f"hex({hash_name}({name}))", digest.hex().encode()


def _chain_items(rpc_url: str, chunk: int = 2000) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) of every block's extraData, transaction input and log (topics + data)."""
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    latest = w3.eth.block_number
    for number in range(latest + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        yield f"block {number} extraData", bytes(block["extraData"])
        for tx in block["transactions"]:
            assert not isinstance(tx, bytes)
            yield f"block {number} tx 0x{bytes(tx['hash']).hex()} input", bytes(tx["input"])
    for start in range(0, latest + 1, chunk):
        for log in w3.eth.get_logs({"fromBlock": start, "toBlock": min(latest, start + chunk - 1)}):
            where = (f"block {log['blockNumber']} log {log['logIndex']} of "
                     f"0x{bytes(log['transactionHash']).hex()} ({log['address']})")
            yield where, b"".join(bytes(t) for t in log["topics"]) + bytes(log["data"])


def scan_chain(rpc_url: str, needles: Iterable[str]) -> list[Finding]:
    """Every occurrence of every needle, in any of its forms, anywhere on the chain."""
    places: list[str] = []
    offsets: list[int] = []
    parts: list[bytes] = []
    size = 0
    for where, data in _chain_items(rpc_url):
        places.append(where)
        offsets.append(size)
        parts.append(data)
        size += len(data) + len(_SEPARATOR)
    blob = _SEPARATOR.join(parts)
    scanned = max(1, sum(len(p) for p in parts))
    findings = []
    for needle in dict.fromkeys(n for n in needles if n):
        for form, raw in needle_forms(needle):
            chance = scanned / 256.0 ** len(raw)
            at = blob.find(raw)
            while at != -1:
                findings.append(Finding(needle, form, places[bisect.bisect_right(offsets, at) - 1],
                                        chance))
                at = blob.find(raw, at + 1)
    return findings


def personal_needles(resources: Iterable[dict[str, Any]]) -> list[str]:
    """Names, identifiers (身份证号, 病案号, 工号), phone numbers and references of the people
    among `resources` (Patient, Practitioner, RelatedPerson)."""
    out: list[str] = []
    for r in resources:
        if r.get("resourceType") not in ("Patient", "Practitioner", "RelatedPerson"):
            continue
        out.append(f"{r['resourceType']}/{r['id']}")
        for name in r.get("name", []):
            out.append(name.get("text") or "")
            out.append(name.get("family", "") + "".join(name.get("given", [])))
        out += [i.get("value", "") for i in r.get("identifier", [])]
        out += [t.get("value", "") for t in r.get("telecom", [])]
    return [n for n in dict.fromkeys(out) if n]


def failures(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.chance < CHANCE_LIMIT]


def test_form_list_covers_encodings_and_plain_hashes() -> None:
    forms = dict(needle_forms("张伟"))
    assert forms["utf-8"] == "张伟".encode() and forms["gbk"] == b"\xd5\xc5\xce\xb0"
    assert forms["sha256(utf-8)"] == hashlib.sha256("张伟".encode()).digest()
    assert forms["keccak(gbk)"] == keccak(b"\xd5\xc5\xce\xb0")
    assert forms["hex(utf-8)"] == b"e5bca0e4bc9f"
    assert "gbk" not in dict(needle_forms("13812345678"))  # ASCII: one encoding


def _fresh_store(dev: DevChain, var_dir: Path) -> Store:
    from app.audit.hashing import Keyer
    from tests.audit.conftest import SECRET_HEX

    w3 = Web3(HTTPProvider(dev.url))
    contracts = deploy_all(w3)
    return Store(var_dir, Keyer(bytes.fromhex(SECRET_HEX)), w3, contracts)


OUR_NEEDLES = [
    *personal_needles(patient_resource(*p) for p in PATIENTS),
    *(name for _, name in PRACTITIONERS),
    *(f"Practitioner/{pid}" for pid, _ in PRACTITIONERS),
    "ae-000001", HOSPITAL,
]


def test_an_anchored_store_puts_no_personal_data_on_chain(tmp_path: Path) -> None:
    with DevChain() as dev:
        store = _fresh_store(dev, tmp_path / "var")
        fill(store)
        store.conn.close()
        findings = scan_chain(dev.url, OUR_NEEDLES)
    assert failures(findings) == [], "\n".join(map(str, findings))


def test_the_scan_finds_a_plain_name_and_a_plain_hash_of_an_id_number(tmp_path: Path) -> None:
    _, name, id_number, phone, _ = PATIENTS[1]
    with DevChain() as dev:
        store = _fresh_store(dev, tmp_path / "var")
        fill(store)
        w3 = store.w3
        outsider, other = list(w3.eth.accounts)[3:5]
        # a careless integration: the patient's name in a transaction's data (GBK, as HIS
        # exports are), and an access entry whose patient hash is a plain SHA-256 of the 身份证号
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction(
            {"from": outsider, "to": other, "value": Wei(0),
             "data": f"患者{name} 电话{phone}".encode("gbk")}))
        plain = hashlib.sha256(id_number.encode()).digest()
        w3.eth.wait_for_transaction_receipt(store.chain.audit_log.functions.recordBatch(
            bytes(32) + plain + b"\x02").transact({"from": store.chain.writer}))
        findings = failures(scan_chain(dev.url, [name, id_number, phone]))
        store.conn.close()
    found = {(f.needle, f.form, f.where.split(" ")[2]) for f in findings}
    assert (name, "gbk", "tx") in found
    assert (phone, "utf-8", "tx") in found  # ASCII digits are the same bytes in GBK
    assert (id_number, "sha256(utf-8)", "tx") in found  # in recordBatch's input
    assert (id_number, "sha256(utf-8)", "log") in found  # and as the log's topic


def _needles_from_env() -> list[str]:
    path = os.environ.get("YILIAN_SCAN_NEEDLES_FILE")
    if path:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
                if line.strip()]
    from app.samples.demo import DEMO_PATIENTS
    from app.samples.hospital import HospitalGenerator

    return personal_needles(HospitalGenerator().population(DEMO_PATIENTS, 0))


@pytest.mark.skipif(not os.environ.get("YILIAN_SCAN_CHAIN_URL"),
                    reason="set YILIAN_SCAN_CHAIN_URL to scan a server's chain")
def test_a_servers_chain_holds_no_personal_data() -> None:
    needles = _needles_from_env()
    assert needles, "no needles to look for"
    findings = scan_chain(os.environ["YILIAN_SCAN_CHAIN_URL"], needles)
    assert failures(findings) == [], "\n".join(map(str, findings))
