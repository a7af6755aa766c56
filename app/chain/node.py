"""This node on the chain: the dev chain or an RPC endpoint, the node key, the contracts.

`start_chain` runs once, in the `yilian serve` parent process before uvicorn starts (and in
tests). With `YILIAN_CHAIN=dev` it starts anvil on 127.0.0.1 with its state in
`var/chain/state.json` (dumped every `YILIAN_CHAIN_STATE_INTERVAL` seconds and on exit),
reusing the port recorded last time when it is free. It loads this node's writer key
(`var/chain/node.key`, made on the first dev start, mode 0600; with `YILIAN_CHAIN=rpc` the file
named by `YILIAN_CHAIN_KEY_FILE`, which we never write), deploys the three contracts on the first
start (or attaches to a consortium's with `YILIAN_CHAIN_CONTRACTS=attach`) and records everything
in `var/chain/deployment.json`. Every uvicorn worker then reads that record with `load_handle`.

A chain that was reset under us — another chain id, another block 0, or contract code missing
or changed at a recorded address — is a new *epoch*: `start_chain` (or the anchoring worker,
through `check_chain` and `redeploy`) says so loudly on the log and on stderr, deploys new
contracts and increments the epoch, and the anchoring worker then re-anchors every entry that is
not provable on the new chain.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import BadFunctionCallOutput, ContractLogicError, Web3Exception

from app.chain.deploy import (
    code_hash,
    connect,
    deploy_contracts,
    fund_dev_account,
    has_writer_role,
)
from app.chain.devchain import DevChain, DevChainError, loopback_port_is_free
from app.config import Settings

log = logging.getLogger("yilian.chain")

DEPLOYMENT_FILE = "deployment.json"
STATE_FILE = "state.json"
KEY_FILE = "node.key"
FIRST_EPOCH = 1
# The settings that name an attached contract, by contract.
ATTACH_SETTINGS = {"AuditLog": "chain_audit_log", "ConsentRegistry": "chain_consent_registry",
                   "Anchor": "chain_anchor"}


class ChainError(RuntimeError):
    """The chain cannot be used as configured; the message says what to change."""


class ChainUnreachable(ChainError):
    """The chain's JSON-RPC endpoint did not answer."""


@dataclass(frozen=True)
class ChainHandle:
    rpc_url: str
    chain_id: int
    genesis_hash: str  # "0x…" hash of block 0 when deployed
    account: LocalAccount = field(repr=False)  # this node's writer key
    contracts: dict[str, str]  # "AuditLog" | "ConsentRegistry" | "Anchor" -> checksum address
    epoch: int  # +1 each time a chain reset was detected and we redeployed
    poa: bool
    # keccak-256 of each contract's runtime code when deployed; empty: only presence is checked
    code_hashes: dict[str, str] = field(default_factory=dict)


# -- public API ---------------------------------------------------------------------------------


def start_chain(settings: Settings) -> tuple[DevChain | None, ChainHandle]:
    """Start (dev) or reach (rpc) the chain, deploy or attach, and record the deployment.

    Returns the running anvil (dev; the caller stops it) and the handle. Raises ChainError (or
    DevChainError when anvil will not start) with a message fit for the operator.
    """
    if settings.chain == "off":
        raise ChainError("YILIAN_CHAIN is off: there is no chain to start")
    _private_dir(settings.chain_dir)
    record = read_deployment(settings)
    dev: DevChain | None = None
    if settings.chain == "dev":
        dev = _start_anvil(settings, record)
        rpc_url = dev.url
    else:
        if not settings.chain_rpc:
            raise ChainError("YILIAN_CHAIN=rpc needs YILIAN_CHAIN_RPC (the chain's JSON-RPC URL)")
        rpc_url = settings.chain_rpc
    try:
        handle = _prepare(settings, rpc_url, record, on_anvil=dev is not None)
    except BaseException:
        if dev is not None:
            dev.stop()
        raise
    return dev, handle


def load_handle(settings: Settings) -> ChainHandle | None:
    """The handle for a server worker: from deployment.json and the key file (written by
    `start_chain`), or, for chain=rpc with attached contracts and no record yet, from the
    settings and the chain itself. None when the chain is off or nothing is deployed yet."""
    if settings.chain == "off":
        return None
    record = read_deployment(settings)
    if record is not None:
        rpc_url = settings.chain_rpc if settings.chain == "rpc" else str(record["rpc_url"])
        return _handle_from_record(record, rpc_url, _load_key(settings, create=False),
                                   settings.chain_poa)
    if settings.chain == "rpc" and settings.chain_contracts == "attach" and settings.chain_rpc:
        account = _load_key(settings, create=False)
        contracts = _attach_addresses(settings)
        try:
            w3 = connect(settings.chain_rpc, settings.chain_poa, timeout=5.0)
            chain_id, genesis = _chain_identity(w3)
            hashes = {name: h for name, address in contracts.items()
                      if (h := code_hash(w3, address)) is not None}
        except (OSError, requests.RequestException, Web3Exception) as exc:
            log.warning("chain at %s not reachable yet (%s); anchoring waits for it",
                        public_url(settings.chain_rpc), type(exc).__name__)
            return None
        return ChainHandle(rpc_url=settings.chain_rpc, chain_id=chain_id, genesis_hash=genesis,
                           account=account, contracts=contracts, epoch=FIRST_EPOCH,
                           poa=settings.chain_poa, code_hashes=hashes)
    return None


def check_chain(handle: ChainHandle) -> str | None:
    """Why the chain no longer matches `handle` (reset, contracts gone or replaced), or None.

    Raises ChainUnreachable when the chain does not answer: that is not a reset.
    """
    w3 = connect(handle.rpc_url, handle.poa, timeout=10.0)
    try:
        chain_id, genesis = _chain_identity(w3)
        if chain_id != handle.chain_id:
            return f"the chain id is now {chain_id}, it was {handle.chain_id}"
        if genesis != handle.genesis_hash:
            return f"block 0 is now {genesis}, it was {handle.genesis_hash}"
        for name, address in handle.contracts.items():
            found = code_hash(w3, address)
            if found is None:
                return f"there is no contract code at {name}'s address {address} any more"
            recorded = handle.code_hashes.get(name)
            if recorded is not None and found != recorded:
                return (f"the code at {name}'s address {address} changed: its hash is now "
                        f"{found}, it was {recorded}")
    except (OSError, requests.RequestException, Web3Exception) as exc:
        raise ChainUnreachable(f"the chain at {public_url(handle.rpc_url)} did not answer: "
                               f"{type(exc).__name__}") from exc
    return None


def redeploy(settings: Settings, handle: ChainHandle, reason: str) -> ChainHandle:
    """Announce a chain reset loudly, deploy new contracts (or, with attached contracts,
    verify the configured ones again), record them and return the handle of epoch + 1."""
    current = read_deployment(settings)
    if current is not None and int(current["epoch"]) > handle.epoch:
        # another process (a restarted `yilian serve`, another worker) already moved on
        newer = _handle_from_record(current, handle.rpc_url, handle.account, handle.poa)
        if check_chain(newer) is None:
            return newer
    epoch = max(handle.epoch, int(current["epoch"]) if current else 0) + 1
    announce_reset(handle, reason, epoch)
    w3 = connect(handle.rpc_url, handle.poa)
    if settings.chain_contracts == "attach":
        new = _attach(settings, w3, handle.rpc_url, handle.account, epoch)
    else:
        if settings.chain == "dev":
            fund_dev_account(w3, handle.account.address)
        new = _deploy(w3, handle.rpc_url, handle.account, epoch, handle.poa)
    write_deployment(settings, new, mode=settings.chain_contracts)
    log.critical("chain epoch %d: contracts %s on chain id %d", new.epoch,
                 ", ".join(f"{n} {a}" for n, a in new.contracts.items()), new.chain_id)
    return new


# -- helpers used by the CLI and the status endpoint -------------------------------------------


def public_url(url: str) -> str:
    """An RPC URL fit for logs and `/chain/status`: scheme, host and port only. User info,
    query and path are dropped because hosted endpoints carry API keys in any of them."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    if not parts.scheme or not host:
        return "(unparseable URL)"
    host = f"[{host}]" if ":" in host else host
    path = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{path}"


def describe(settings: Settings, dev: DevChain | None, handle: ChainHandle) -> str:
    """One line for the console: which chain, where, which contracts."""
    where = (f"dev chain (anvil) on {handle.rpc_url}, state in {settings.chain_dir}/"
             if dev is not None else f"chain at {public_url(handle.rpc_url)}")
    contracts = ", ".join(f"{name} {address}" for name, address in handle.contracts.items())
    return (f"chain: {where}, chain id {handle.chain_id}, epoch {handle.epoch}, writer "
            f"{handle.account.address}; {contracts}")


def announce_reset(handle: ChainHandle, reason: str, epoch: int) -> None:
    """The CRITICAL message of a chain reset, on the log and framed on stderr."""
    lines = [
        f"CHAIN RESET DETECTED on {public_url(handle.rpc_url)} (chain id {handle.chain_id}, "
        f"epoch {handle.epoch}): {reason}.",
        "The anchors written so far are not on this chain any more: "
        + ", ".join(f"{n} {a}" for n, a in handle.contracts.items()) + ".",
        f"Starting epoch {epoch}: new contracts are deployed (or the configured ones attached) "
        "and every audit entry, resource version and consent decision will be re-anchored "
        "on the chain as it is now.",
        "If this was not an intended reset, the chain operator must find out why.",
    ]
    log.critical("\n".join(lines))
    rule = "!" * 78
    print("\n".join([rule, *(f"!! {line}" for line in lines), rule]), file=sys.stderr,
          flush=True)


# -- deployment record --------------------------------------------------------------------------


def deployment_path(settings: Settings) -> Path:
    return settings.chain_dir / DEPLOYMENT_FILE


def read_deployment(settings: Settings) -> dict[str, Any] | None:
    path = deployment_path(settings)
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ChainError(f"{path} is unreadable ({exc}); move it away to deploy afresh") from exc
    missing = {"rpc_url", "chain_id", "genesis_hash", "contracts", "epoch"} - record.keys()
    if missing:
        raise ChainError(f"{path} lacks {sorted(missing)}; move it away to deploy afresh")
    return record


def write_deployment(settings: Settings, handle: ChainHandle, *, mode: str,
                     deployed_at: str | None = None) -> None:
    """Write deployment.json atomically (a worker may read it at any moment)."""
    path = deployment_path(settings)
    _private_dir(path.parent)
    record = {
        "rpc_url": handle.rpc_url,
        "chain_id": handle.chain_id,
        "genesis_hash": handle.genesis_hash,
        "contracts": handle.contracts,
        "code_hashes": handle.code_hashes,
        "epoch": handle.epoch,
        "writer": handle.account.address,
        "mode": mode,
        "deployed_at": deployed_at or datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _handle_from_record(record: dict[str, Any], rpc_url: str, account: LocalAccount,
                        poa: bool) -> ChainHandle:
    return ChainHandle(rpc_url=rpc_url, chain_id=int(record["chain_id"]),
                       genesis_hash=str(record["genesis_hash"]), account=account,
                       contracts={str(k): str(v) for k, v in record["contracts"].items()},
                       epoch=int(record["epoch"]), poa=poa,
                       code_hashes={str(k): str(v)
                                    for k, v in record.get("code_hashes", {}).items()})


# -- start-up steps -----------------------------------------------------------------------------


def _prepare(settings: Settings, rpc_url: str, record: dict[str, Any] | None,
             on_anvil: bool) -> ChainHandle:
    account = _load_key(settings, create=on_anvil and settings.chain_key_file is None)
    w3 = connect(rpc_url, settings.chain_poa)
    try:
        w3.eth.chain_id  # noqa: B018 - the first call tells whether the endpoint answers at all
    except (OSError, requests.RequestException, Web3Exception) as exc:
        raise ChainUnreachable(f"the chain at {public_url(rpc_url)} did not answer "
                               f"({type(exc).__name__}); check YILIAN_CHAIN_RPC") from exc
    if on_anvil:
        fund_dev_account(w3, account.address)
    mode = settings.chain_contracts
    if record is None:
        if mode == "attach":
            handle = _attach(settings, w3, rpc_url, account, FIRST_EPOCH)
        else:
            handle = _deploy(w3, rpc_url, account, FIRST_EPOCH, settings.chain_poa)
            log.info("deployed the contracts on chain id %d: %s", handle.chain_id,
                     handle.contracts)
        write_deployment(settings, handle, mode=mode)
        return handle
    recorded = _handle_from_record(record, rpc_url, account, settings.chain_poa)
    reason = check_chain(recorded)
    if reason is None and mode == "attach" and recorded.contracts != _attach_addresses(settings):
        reason = "the configured contract addresses differ from the recorded ones"
    if reason is not None:
        return redeploy(settings, recorded, reason)
    if mode == "attach":
        handle = _attach(settings, w3, rpc_url, account, recorded.epoch)
    else:
        _require_writer(w3, recorded.contracts, account, record.get("writer"))
        handle = recorded
    write_deployment(settings, handle, mode=mode, deployed_at=record.get("deployed_at"))
    return handle


def _deploy(w3: Web3, rpc_url: str, account: LocalAccount, epoch: int,
            poa: bool) -> ChainHandle:
    chain_id, genesis = _chain_identity(w3)
    try:
        deployment = deploy_contracts(w3, account)
    except ValueError as exc:  # web3 raises ValueError for JSON-RPC errors (funds, gas)
        raise ChainError(f"deploying the contracts on {public_url(rpc_url)} failed: {exc}; "
                         f"the node key {account.address} needs ether for gas") from exc
    return ChainHandle(rpc_url=rpc_url, chain_id=chain_id, genesis_hash=genesis,
                       account=account, contracts=deployment.contracts, epoch=epoch, poa=poa,
                       code_hashes=deployment.code_hashes)


def _attach_addresses(settings: Settings) -> dict[str, str]:
    missing = [f"YILIAN_{s.upper()}" for s in ATTACH_SETTINGS.values()
               if not getattr(settings, s)]
    if missing:
        raise ChainError(f"YILIAN_CHAIN_CONTRACTS=attach needs {', '.join(missing)}")
    addresses: dict[str, str] = {}
    for name, setting in ATTACH_SETTINGS.items():
        value = str(getattr(settings, setting)).strip()
        if not Web3.is_address(value):
            raise ChainError(f"YILIAN_{setting.upper()}={value!r} is not an Ethereum address")
        addresses[name] = Web3.to_checksum_address(value)
    return addresses


def _attach(settings: Settings, w3: Web3, rpc_url: str, account: LocalAccount,
            epoch: int) -> ChainHandle:
    """The consortium's contracts from the settings, verified: code present, and this node's
    key holding WRITER_ROLE on each."""
    contracts = _attach_addresses(settings)
    chain_id, genesis = _chain_identity(w3)
    hashes: dict[str, str] = {}
    for name, address in contracts.items():
        found = code_hash(w3, address)
        setting = f"YILIAN_{ATTACH_SETTINGS[name].upper()}"
        if found is None:
            raise ChainError(f"no contract code at {setting}={address} on "
                             f"{public_url(rpc_url)} (chain id {chain_id})")
        hashes[name] = found
    _require_writer(w3, contracts, account, None)
    return ChainHandle(rpc_url=rpc_url, chain_id=chain_id, genesis_hash=genesis,
                       account=account, contracts=contracts, epoch=epoch,
                       poa=settings.chain_poa, code_hashes=hashes)


def _require_writer(w3: Web3, contracts: dict[str, str], account: LocalAccount,
                    recorded_writer: object) -> None:
    for name, address in contracts.items():
        try:
            granted = has_writer_role(w3, name, address, account.address)
        except (ContractLogicError, BadFunctionCallOutput) as exc:
            raise ChainError(f"the contract at {address} does not answer as {name} "
                             f"(hasRole failed: {type(exc).__name__})") from exc
        if not granted:
            hint = (f"; deployment.json was written for the key {recorded_writer}"
                    if recorded_writer and recorded_writer != account.address else "")
            raise ChainError(f"this node's key {account.address} does not hold WRITER_ROLE "
                             f"on {name} at {address}: the contract's admin must call "
                             f"grantRole(keccak256(\"WRITER_ROLE\"), {account.address}){hint}")


def _chain_identity(w3: Web3) -> tuple[int, str]:
    chain_id = int(w3.eth.chain_id)
    genesis = w3.eth.get_block(0)["hash"]
    return chain_id, Web3.to_hex(genesis)


# -- dev chain ----------------------------------------------------------------------------------


def _start_anvil(settings: Settings, record: dict[str, Any] | None) -> DevChain:
    """anvil with its state under var/chain/, on the recorded port when that is still free."""
    port = 0
    if record is not None:
        parts = urlsplit(str(record["rpc_url"]))
        if parts.hostname == "127.0.0.1" and parts.port and loopback_port_is_free(parts.port):
            port = parts.port
    state = settings.chain_dir / STATE_FILE
    try:
        return DevChain(port=port, state_file=state, state_interval=settings.chain_state_interval,
                        background=True).start()
    except DevChainError as exc:
        if "--state" in str(exc) and state.exists():
            # anvil cannot load a state file cut short by a crash during a periodic dump: keep
            # it for inspection and start an empty chain, which start_chain then treats as a
            # reset (new contracts, everything re-anchored)
            kept = state.with_name(f"{STATE_FILE}.unreadable-{int(time.time())}")
            os.replace(state, kept)
            log.critical("anvil could not load %s (%s); moved it to %s and starting an empty "
                         "dev chain", state, str(exc).splitlines()[0], kept)
        elif port == 0:
            raise
        # else the port was taken between the check and anvil's bind: any free port will do
        time.sleep(0.1)
        return DevChain(port=0, state_file=state, state_interval=settings.chain_state_interval,
                        background=True).start()


# -- node key -----------------------------------------------------------------------------------


def key_path(settings: Settings) -> Path:
    return settings.chain_key_file or settings.chain_dir / KEY_FILE


def _load_key(settings: Settings, *, create: bool) -> LocalAccount:
    """This node's writer key. Made (mode 0600) only for the dev chain's default key file; a
    configured key file is only ever read. The key itself never appears in a message."""
    path = key_path(settings)
    if settings.chain == "rpc" and settings.chain_key_file is None:
        raise ChainError("YILIAN_CHAIN=rpc needs YILIAN_CHAIN_KEY_FILE: a file holding this "
                         "node's private key in hex (mode 0600)")
    if create and not path.exists():
        _private_dir(path.parent)
        account: LocalAccount = Account.create()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(account.key.hex().removeprefix("0x") + "\n")
        log.info("made this node's key %s in %s", account.address, path)
        return account
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ChainError(f"the node key file {path} does not exist"
                         + ("; set YILIAN_CHAIN_KEY_FILE" if settings.chain == "rpc" else "")
                         ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ChainError(f"the node key file {path} is unreadable: {type(exc).__name__}") \
            from None
    if create and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    elif path.stat().st_mode & 0o077:
        log.warning("the node key file %s is readable by other users: chmod 600 it", path)
    hex_key = text.removeprefix("0x")
    if len(hex_key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hex_key):
        raise ChainError(f"the node key file {path} does not hold a private key as 64 hex "
                         "digits")
    loaded: LocalAccount = Account.from_key(bytes.fromhex(hex_key))
    return loaded


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path
