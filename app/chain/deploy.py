"""Deploying the three contracts (AuditLog, ConsentRegistry, Anchor) with this node's key.

The node's key deploys each contract as its admin (OpenZeppelin AccessControl
DEFAULT_ADMIN_ROLE, the constructor argument) and then grants itself WRITER_ROLE, so one key is
all a node needs on the dev chain or on a chain where it is trusted to deploy. Transactions are
signed locally (no unlocked node accounts) with explicit nonces, sent together and then awaited.

A deployment is identified by the keccak-256 hash of each contract's runtime code as the chain
returns it (`eth_getCode`): `app/chain/node.py` records these hashes and compares them on every
start to notice a chain that was reset or whose contracts were replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.middleware import ExtraDataToPOAMiddleware
from web3.types import Nonce, TxParams

from app.chain.artifacts import CONTRACTS, load_artifact

WRITER_ROLE = Web3.keccak(text="WRITER_ROLE")
# What `anvil_setBalance` gives the dev node key: far more than any test or benchmark spends.
DEV_BALANCE_WEI = 10**24
RECEIPT_TIMEOUT = 120.0


class DeployError(RuntimeError):
    """A deployment or role-grant transaction failed, or a contract is not as expected."""


@dataclass(frozen=True)
class Deployment:
    contracts: dict[str, str]  # contract name -> checksum address
    code_hashes: dict[str, str]  # contract name -> "0x" keccak-256 of its runtime code


def connect(rpc_url: str, poa: bool, timeout: float = 30.0) -> Web3:
    """A synchronous web3 client; PoA chains (geth clique, Besu IBFT/QBFT) put more than 32
    bytes in a block's extraData, which web3 refuses unless the PoA middleware strips it."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    if poa:
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


def code_hash(w3: Web3, address: str) -> str | None:
    """keccak-256 of the runtime code at `address`, or None when there is no code."""
    code = w3.eth.get_code(Web3.to_checksum_address(address))
    if not code:
        return None
    return Web3.to_hex(Web3.keccak(code))


def contract(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address),
                           abi=load_artifact(name).abi)


def has_writer_role(w3: Web3, name: str, address: str, writer: str) -> bool:
    return bool(contract(w3, name, address).functions.hasRole(WRITER_ROLE, writer).call())


def fund_dev_account(w3: Web3, address: str, wei: int = DEV_BALANCE_WEI) -> None:
    """Give the node key ether on anvil (`anvil_setBalance`), topping up only when low."""
    if w3.eth.get_balance(Web3.to_checksum_address(address)) < wei // 2:
        w3.provider.make_request("anvil_setBalance", [address, hex(wei)])  # type: ignore[arg-type]


class _Sender:
    """Signs and sends transactions from one key with consecutive nonces."""

    def __init__(self, w3: Web3, account: LocalAccount) -> None:
        self.w3 = w3
        self.account = account
        self.chain_id = w3.eth.chain_id
        self.nonce = int(w3.eth.get_transaction_count(account.address, "pending"))

    def send(self, tx: TxParams) -> HexBytes:
        signed = self.account.sign_transaction(tx)  # type: ignore[arg-type]
        self.nonce += 1
        return self.w3.eth.send_raw_transaction(signed.raw_transaction)

    def base(self) -> TxParams:
        return {"from": self.account.address, "nonce": Nonce(self.nonce),
                "chainId": self.chain_id}

    def wait(self, tx_hash: HexBytes, what: str) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT)
        if receipt["status"] != 1:
            raise DeployError(f"{what} reverted (transaction {Web3.to_hex(tx_hash)} in block "
                              f"{receipt['blockNumber']})")
        return receipt


def deploy_contracts(w3: Web3, account: LocalAccount) -> Deployment:
    """Deploy AuditLog, ConsentRegistry and Anchor with `account` as admin and writer."""
    sender = _Sender(w3, account)
    creations: dict[str, HexBytes] = {}
    for name in CONTRACTS:
        art = load_artifact(name)
        factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        creations[name] = sender.send(
            factory.constructor(account.address).build_transaction(sender.base()))
    addresses: dict[str, str] = {}
    for name, tx_hash in creations.items():
        receipt = sender.wait(tx_hash, f"deploying {name}")
        addresses[name] = Web3.to_checksum_address(receipt["contractAddress"])
    grants = {
        name: sender.send(contract(w3, name, address).functions
                          .grantRole(WRITER_ROLE, account.address)
                          .build_transaction(sender.base()))
        for name, address in addresses.items()
    }
    for name, tx_hash in grants.items():
        sender.wait(tx_hash, f"granting WRITER_ROLE on {name} to {account.address}")
    hashes: dict[str, str] = {}
    for name, address in addresses.items():
        found = code_hash(w3, address)
        if found is None:
            raise DeployError(f"{name} was deployed at {address} but the chain has no code there")
        hashes[name] = found
    return Deployment(contracts=addresses, code_hashes=hashes)
