"""app/chain/devchain.py: anvil from node_modules on loopback, stopped cleanly (issue 5)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.chain.devchain import DevChain, DevChainError, anvil_binary, rpc


def test_the_dev_chain_is_the_pinned_anvil_on_loopback_and_frees_its_port() -> None:
    with DevChain(chain_id=1337) as dev:
        assert dev.url.startswith("http://127.0.0.1:")
        assert rpc(dev.url, "web3_clientVersion") == "anvil/v1.7.1"
        assert rpc(dev.url, "eth_chainId") == hex(1337)
        port = dev.port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_the_chain_state_survives_a_restart_with_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "chain" / "state.json"
    with DevChain(state_file=state) as dev:
        rpc(dev.url, "evm_mine", [])
        rpc(dev.url, "evm_mine", [])
        height = int(str(rpc(dev.url, "eth_blockNumber")), 16)
    assert state.exists()
    with DevChain(state_file=state) as dev:
        assert int(str(rpc(dev.url, "eth_blockNumber")), 16) == height


def test_a_missing_anvil_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(DevChainError, match="npm ci"):
        anvil_binary(tmp_path / "node_modules")
