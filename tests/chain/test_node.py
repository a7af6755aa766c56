"""app/chain/node.py: the dev chain under var/chain/, the node key, deploy, attach, resets."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from web3 import Web3
from web3.middleware import ExtraDataToPOAMiddleware

from app.chain.deploy import WRITER_ROLE, connect, has_writer_role
from app.chain.devchain import BACKGROUND_NICE, DevChain, rpc
from app.chain.node import (
    ChainError,
    check_chain,
    deployment_path,
    load_handle,
    public_url,
    redeploy,
    start_chain,
)
from tests.chain.conftest import Nodes, deploy, send
from tests.conftest import make_settings
from tests.live_server import REPO, LiveServer

CONTRACT_NAMES = ["AuditLog", "ConsentRegistry", "Anchor"]


def _nonce(url: str, address: str) -> int:
    return int(str(rpc(url, "eth_getTransactionCount", [address, "latest"])), 16)


def _refused(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _key_file(tmp_path: Path, url: str) -> Path:
    """A writer key for chain=rpc, made and funded the way an operator would."""
    account = Account.create()
    path = tmp_path / "hospital-node.key"
    path.write_text("0x" + account.key.hex().removeprefix("0x") + "\n")
    path.chmod(0o600)
    rpc(url, "anvil_setBalance", [account.address, hex(10**21)])
    return path


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in found]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _niceness(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def test_first_dev_start_deploys_and_a_restart_reuses_the_contracts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, chain="dev", chain_state_interval=1)
    dev, first = start_chain(settings)
    assert dev is not None
    try:
        record = json.loads(deployment_path(settings).read_text())
        assert record["rpc_url"] == dev.url == first.rpc_url
        assert record["contracts"] == first.contracts
        assert sorted(first.contracts) == sorted(CONTRACT_NAMES)
        assert record["epoch"] == first.epoch == 1
        assert record["chain_id"] == first.chain_id == 31337
        assert record["genesis_hash"] == first.genesis_hash
        assert set(record["code_hashes"]) == set(CONTRACT_NAMES)
        w3 = connect(dev.url, poa=False)
        for name, address in first.contracts.items():
            assert w3.eth.get_code(Web3.to_checksum_address(address))
            assert has_writer_role(w3, name, address, first.account.address)
        sent = _nonce(dev.url, first.account.address)
        assert sent == 6  # three deployments, three grants of WRITER_ROLE
        # background work: niced below the processes that answer requests
        assert dev._proc is not None
        assert _niceness(dev._proc.pid) == os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE
        assert check_chain(first) is None
        assert load_handle(settings) == first
    finally:
        dev.stop()
    key = settings.chain_dir / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.chain_dir.stat().st_mode) == 0o700
    key_hex = key.read_text().strip()
    assert Account.from_key(bytes.fromhex(key_hex)).address == first.account.address
    assert key_hex not in deployment_path(settings).read_text()
    assert (settings.chain_dir / "state.json").exists()

    dev, second = start_chain(settings)
    assert dev is not None
    try:
        assert second == first  # same port, addresses, code, epoch
        assert _nonce(dev.url, second.account.address) == sent  # nothing deployed again
        assert json.loads(deployment_path(settings).read_text())["deployed_at"] == \
            record["deployed_at"]
    finally:
        dev.stop()
    assert _refused(first.rpc_url)


def test_a_busy_recorded_port_moves_the_dev_chain_and_the_record(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, chain="dev")
    dev, first = start_chain(settings)
    assert dev is not None
    dev.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", dev.port))
        squatter.listen()
        dev, second = start_chain(settings)
        assert dev is not None
        try:
            assert second.rpc_url != first.rpc_url
            assert second.contracts == first.contracts and second.epoch == 1
            assert load_handle(settings) == second
        finally:
            dev.stop()


def test_a_lost_dev_chain_state_is_announced_loudly_and_everything_redeployed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, chain="dev")
    dev, first = start_chain(settings)
    assert dev is not None
    dev.stop()
    (settings.chain_dir / "state.json").unlink()
    capsys.readouterr()
    with caplog.at_level(logging.CRITICAL, logger="yilian.chain"):
        dev, second = start_chain(settings)
    assert dev is not None
    try:
        assert second.epoch == 2
        assert json.loads(deployment_path(settings).read_text())["epoch"] == 2
        assert second.account.address == first.account.address
        err = capsys.readouterr().err
        assert "CHAIN RESET DETECTED" in err and "epoch 2" in err and "re-anchored" in err
        # a fresh anvil has another block 0 unless it started within the same second
        assert "block 0 is now" in err or "no contract code at AuditLog" in err
        banner = [r for r in caplog.records if "CHAIN RESET DETECTED" in r.getMessage()]
        assert banner and banner[0].levelno == logging.CRITICAL
        assert len(banner[0].getMessage().splitlines()) > 1
        assert check_chain(second) is None
        w3 = connect(dev.url, poa=False)
        for name, address in second.contracts.items():
            assert has_writer_role(w3, name, address, second.account.address)
    finally:
        dev.stop()


def test_a_reset_under_a_running_server_is_redeployed_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path, chain="dev")
    dev, first = start_chain(settings)
    assert dev is not None
    dev.stop()
    (settings.chain_dir / "state.json").unlink()
    # anvil restarted empty behind the server's back (same port, nothing funded or deployed)
    with DevChain(port=dev.port, state_file=settings.chain_dir / "state.json"):
        reason = check_chain(first)
        assert reason is not None
        second = redeploy(settings, first, reason)
        assert second.epoch == 2 and second.rpc_url == first.rpc_url
        assert check_chain(second) is None
        assert load_handle(settings) == second
        assert "CHAIN RESET DETECTED" in capsys.readouterr().err
        sent = _nonce(first.rpc_url, first.account.address)
        # a worker still holding the epoch-1 handle finds epoch 2 in place: no second deploy
        assert redeploy(settings, first, reason) == second
        assert _nonce(first.rpc_url, first.account.address) == sent


def test_an_unreadable_dev_chain_state_is_kept_aside_and_treated_as_a_reset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path, chain="dev")
    dev, _ = start_chain(settings)
    assert dev is not None
    dev.stop()
    state = settings.chain_dir / "state.json"
    state.write_bytes(state.read_bytes()[:100])  # a dump cut short by a crash
    dev, second = start_chain(settings)
    assert dev is not None
    try:
        assert second.epoch == 2
        assert "CHAIN RESET DETECTED" in capsys.readouterr().err
        assert list(settings.chain_dir.glob("state.json.unreadable-*"))
    finally:
        dev.stop()


def test_a_fresh_chain_behind_the_rpc_url_is_a_reset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with DevChain() as before:
        key = _key_file(tmp_path, before.url)
        settings = make_settings(tmp_path, chain="rpc", chain_rpc=before.url,
                                 chain_key_file=key)
        key_text = key.read_text()
        none, first = start_chain(settings)
        assert none is None and first.epoch == 1
        assert load_handle(settings) == first
    # the operator replaced the chain behind the same configuration (here: another chain id)
    with DevChain(port=before.port, chain_id=31338) as after:
        assert check_chain(first) == "the chain id is now 31338, it was 31337"
        rpc(after.url, "anvil_setBalance", [first.account.address, hex(10**21)])
        capsys.readouterr()
        _, second = start_chain(settings)
        assert second.epoch == 2 and second.chain_id == 31338
        assert "CHAIN RESET DETECTED" in capsys.readouterr().err
        assert check_chain(second) is None
    assert key.read_text() == key_text  # a configured key file is only read
    assert not (settings.chain_dir / "node.key").exists()


def test_rpc_without_a_key_file_or_an_unreachable_chain_fails_clearly(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ChainError, match="YILIAN_CHAIN_KEY_FILE"):
        start_chain(make_settings(tmp_path, chain="rpc", chain_rpc=closed))
    with pytest.raises(ChainError, match="does not exist"):
        start_chain(make_settings(tmp_path, chain="rpc", chain_rpc=closed,
                                  chain_key_file=tmp_path / "missing.key"))
    bad = tmp_path / "bad.key"
    bad.write_text("北京协和医院节点\n")
    with pytest.raises(ChainError, match=r"unreadable|64 hex digits") as info:
        start_chain(make_settings(tmp_path, chain="rpc", chain_rpc=closed, chain_key_file=bad))
    assert "北京" not in str(info.value)  # the file's content is never echoed
    good = tmp_path / "good.key"
    good.write_text(Account.create().key.hex())
    with pytest.raises(ChainError, match="did not answer"):
        start_chain(make_settings(tmp_path, chain="rpc", chain_rpc=closed, chain_key_file=good))


def test_attaching_needs_code_and_the_writer_role_on_every_contract(
        tmp_path: Path, chain: DevChain, w3: Web3, nodes: Nodes) -> None:
    deployed = {name: deploy(w3, name, nodes.admin) for name in CONTRACT_NAMES}
    key = _key_file(tmp_path, chain.url)
    writer = Account.from_key(bytes.fromhex(key.read_text().strip().removeprefix("0x")))
    addresses = {"chain_audit_log": deployed["AuditLog"].address,
                 "chain_consent_registry": deployed["ConsentRegistry"].address,
                 "chain_anchor": deployed["Anchor"].address}
    settings = make_settings(tmp_path, chain="rpc", chain_rpc=chain.url, chain_key_file=key,
                             chain_contracts="attach", **addresses)

    with pytest.raises(ChainError, match="needs YILIAN_CHAIN_ANCHOR"):
        start_chain(settings.model_copy(update={"chain_anchor": ""}))
    with pytest.raises(ChainError, match="no contract code at YILIAN_CHAIN_ANCHOR"):
        start_chain(settings.model_copy(update={"chain_anchor": nodes.outsider}))
    with pytest.raises(ChainError, match=f"{writer.address} does not hold WRITER_ROLE on "
                                         "AuditLog") as info:
        start_chain(settings)
    assert "grantRole" in str(info.value)
    assert not deployment_path(settings).exists()

    for contract in deployed.values():
        send(w3, contract.functions.grantRole(WRITER_ROLE, writer.address), nodes.admin)
    _, handle = start_chain(settings)
    assert handle.contracts == {name: c.address for name, c in deployed.items()}
    assert handle.epoch == 1 and handle.account.address == writer.address
    assert json.loads(deployment_path(settings).read_text())["mode"] == "attach"
    assert load_handle(settings) == handle
    # a worker started without a deployment record attaches from the settings alone
    deployment_path(settings).unlink()
    assert load_handle(settings) == handle


def test_load_handle_is_none_when_the_chain_is_off_or_nothing_is_deployed(
        tmp_path: Path) -> None:
    assert load_handle(make_settings(tmp_path, chain="off")) is None
    assert load_handle(make_settings(tmp_path, chain="dev")) is None
    with pytest.raises(ChainError, match="no chain"):
        start_chain(make_settings(tmp_path, chain="off"))


def test_poa_chains_get_the_extradata_middleware() -> None:
    assert ExtraDataToPOAMiddleware in connect("http://127.0.0.1:1", poa=True).middleware_onion
    assert ExtraDataToPOAMiddleware not in connect("http://127.0.0.1:1",
                                                   poa=False).middleware_onion


def test_rpc_urls_are_shown_without_credentials_or_api_keys() -> None:
    assert public_url("https://hospital:s3cret@rpc.chain.example.cn:8545/v3/0123abcd?key=9") \
        == "https://rpc.chain.example.cn:8545/…"
    assert public_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert public_url("not a url") == "(unparseable URL)"


def test_serve_with_the_dev_chain_starts_and_stops_anvil(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "var", env={"YILIAN_CHAIN": "dev"})
    with server:
        record = json.loads((tmp_path / "var" / "chain" / "deployment.json").read_text())
        assert f"chain: dev chain (anvil) on {record['rpc_url']}" in server.log_text()
        assert int(str(rpc(record["rpc_url"], "eth_blockNumber")), 16) >= 6
        assert httpx.get(server.base_url + "/metadata").status_code == 200
        assert httpx.get(server.root_url + "/chain/status").json()["reachable"] is True
        # the anchoring process and anvil run niced below the server's workers
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        background = {pid: _niceness(pid) for pid in _children(server.pid)
                      if any(w in _cmdline(pid) for w in ("app.cli anchor", "anvil"))}
        assert len(background) == 2, background
        assert set(background.values()) == {mine + BACKGROUND_NICE}
        # SIGTERM to `yilian serve` alone: it stops uvicorn, then anvil
        os.kill(server.pid, 15)
        assert server.process is not None
        assert server.process.wait(timeout=20) == 0
    assert _refused(record["rpc_url"])
    assert (tmp_path / "var" / "chain" / "state.json").exists()
    assert not server.tracebacks()


def test_serve_reports_an_unusable_chain_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YILIAN_")}
    env.update({"YILIAN_VAR_DIR": str(tmp_path / "var"), "YILIAN_DEMO": "false",
                "YILIAN_AUTH": "off", "YILIAN_CHAIN": "rpc",
                "YILIAN_CHAIN_RPC": f"http://127.0.0.1:{_closed_port()}",
                "PYTHONPATH": str(REPO)})
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port",
                           str(_closed_port())], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "the chain (rpc) is not usable" in done.stderr
    assert "YILIAN_CHAIN_KEY_FILE" in done.stderr
    assert "Traceback" not in done.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
