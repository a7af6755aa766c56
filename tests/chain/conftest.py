"""A dev chain (anvil from node_modules) per test session and fresh contract deployments per test.

Accounts are anvil's unlocked dev accounts: 0 is the consortium admin, 1 and 2 are the writer
nodes of two hospitals, 3 is an outsider with no role.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi import decode
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.types import TxReceipt

from app.chain.artifacts import load_artifact

# The server secret for keyed hashes: a fixed test key, so hashes are stable across runs.
HMAC_KEY = bytes.fromhex("5d1f0c3a9b7e4f2a8c6d0e1b3a5f7c9e2d4b6a8f0c1e3d5b7a9c2e4f6b8d0a1c")


def keyed(text: str) -> bytes:
    """A keyed hash as the server puts it on chain: HMAC-SHA256 with the server secret."""
    return hmac.new(HMAC_KEY, text.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Nodes:
    admin: str
    peking_union: str  # 北京协和医院's writer node
    west_china: str  # 四川大学华西医院's writer node
    outsider: str


@pytest.fixture(scope="session")
def nodes(w3: Web3) -> Nodes:
    a = w3.eth.accounts
    return Nodes(admin=a[0], peking_union=a[1], west_china=a[2], outsider=a[3])


def deploy(w3: Web3, name: str, admin: str) -> Contract:
    art = load_artifact(name)
    factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    tx = factory.constructor(admin).transact({"from": admin})
    receipt = w3.eth.wait_for_transaction_receipt(tx)
    assert receipt["status"] == 1
    return w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)


def deploy_with_writers(w3: Web3, name: str, nodes: Nodes) -> Contract:
    contract = deploy(w3, name, nodes.admin)
    role = contract.functions.WRITER_ROLE().call()
    for writer in (nodes.peking_union, nodes.west_china):
        send(w3, contract.functions.grantRole(role, writer), nodes.admin)
    return contract


@pytest.fixture
def audit_log(w3: Web3, nodes: Nodes) -> Contract:
    return deploy_with_writers(w3, "AuditLog", nodes)


@pytest.fixture
def consent_registry(w3: Web3, nodes: Nodes) -> Contract:
    return deploy_with_writers(w3, "ConsentRegistry", nodes)


@pytest.fixture
def anchor(w3: Web3, nodes: Nodes) -> Contract:
    return deploy_with_writers(w3, "Anchor", nodes)


def send(w3: Web3, call: Any, sender: str, gas: int | None = None) -> TxReceipt:
    tx: dict[str, Any] = {"from": sender}
    if gas is not None:
        tx["gas"] = gas
    receipt = w3.eth.wait_for_transaction_receipt(call.transact(tx))
    assert receipt["status"] == 1, receipt
    return receipt


def custom_error(contract: Contract, exc: ContractCustomError) -> tuple[str, tuple[Any, ...]]:
    """(error name, decoded arguments) of a custom-error revert, from the contract's ABI."""
    data = exc.data if isinstance(exc.data, str) else str(exc.data)
    raw = bytes.fromhex(data.removeprefix("0x"))
    for item in contract.abi:
        if item["type"] != "error":
            continue
        types = [i["type"] for i in item["inputs"]]
        signature = f"{item['name']}({','.join(types)})"
        if Web3.keccak(text=signature)[:4] == raw[:4]:
            values = decode(types, raw[4:])
            return item["name"], tuple(Web3.to_checksum_address(v) if t == "address" else v
                                       for t, v in zip(types, values, strict=True))
    raise AssertionError(f"revert data {data} matches no error in the ABI")


def expect_revert(contract: Contract, call: Any, sender: str) -> tuple[str, tuple[Any, ...]]:
    with pytest.raises(ContractCustomError) as info:
        call.transact({"from": sender})
    return custom_error(contract, info.value)
