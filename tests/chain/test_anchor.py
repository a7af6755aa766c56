"""Anchor: resource-version hashes and Merkle roots, role-gated (issue 5)."""

from __future__ import annotations

from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from tests.chain.conftest import Nodes, expect_revert, keyed, send

VERSIONS = [
    (keyed("Patient/zhangsan/_history/1"),
     Web3.keccak(text='{"resourceType":"Patient","id":"zhangsan","name":[{"text":"张三"}]}')),
    (keyed("Observation/xuechanggui-20261120/_history/1"),
     Web3.keccak(text='{"resourceType":"Observation","id":"xuechanggui-20261120",'
                      '"code":{"text":"白细胞计数"},"valueQuantity":{"value":6.5,"unit":"10*9/L"}}')),
    (keyed("Condition/gaoxueya/_history/2"),
     Web3.keccak(text='{"resourceType":"Condition","id":"gaoxueya","code":{"coding":'
                      '[{"system":"http://hl7.org/fhir/sid/icd-10","code":"I10","display":"高血压"}]}}')),
]
ROOT = Web3.keccak(b"".join(r + c for r, c in VERSIONS))


def test_each_resource_version_is_anchored_as_its_own_event(
        w3: Web3, anchor: Contract, nodes: Nodes) -> None:
    packed = b"".join(r + c for r, c in VERSIONS)
    receipt = send(w3, anchor.functions.anchorVersions(packed), nodes.west_china)
    events = anchor.events.VersionAnchored().process_receipt(receipt, errors=DISCARD)
    assert [(e.args.resourceHash, e.args.contentHash) for e in events] == VERSIONS


def test_a_root_is_anchored_once_with_its_block_time(
        w3: Web3, anchor: Contract, nodes: Nodes) -> None:
    receipt = send(w3, anchor.functions.anchorRoot(ROOT, len(VERSIONS)), nodes.west_china)
    (event,) = anchor.events.RootAnchored().process_receipt(receipt, errors=DISCARD)
    assert (event.args.root, event.args.writer, event.args.leafCount) == (
        ROOT, nodes.west_china, 3)
    block_time = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert anchor.functions.rootInfo(ROOT).call() == (block_time, 3)

    name, args = expect_revert(anchor, anchor.functions.anchorRoot(ROOT, 3), nodes.peking_union)
    assert (name, args) == ("RootAlreadyAnchored", (ROOT, block_time))


def test_an_unknown_root_was_never_anchored(anchor: Contract) -> None:
    assert anchor.functions.rootInfo(ROOT).call() == (0, 0)


def test_a_node_without_the_writer_role_cannot_anchor(anchor: Contract, nodes: Nodes) -> None:
    role = anchor.functions.WRITER_ROLE().call()
    for call in (anchor.functions.anchorRoot(ROOT, 3),
                 anchor.functions.anchorVersions(VERSIONS[0][0] + VERSIONS[0][1])):
        assert expect_revert(anchor, call, nodes.outsider) == (
            "AccessControlUnauthorizedAccount", (nodes.outsider, role))


def test_version_batches_are_limited_and_whole(anchor: Contract, nodes: Nodes) -> None:
    limit = anchor.functions.MAX_BATCH_VERSIONS().call()
    one = VERSIONS[0][0] + VERSIONS[0][1]
    assert expect_revert(anchor, anchor.functions.anchorVersions(one * (limit + 1)),
                         nodes.peking_union) == ("BatchTooLarge", (limit + 1, limit))
    assert expect_revert(anchor, anchor.functions.anchorVersions(one[:40]),
                         nodes.peking_union) == ("BatchNotWholeVersions", (40, 64))
    assert expect_revert(anchor, anchor.functions.anchorVersions(b""),
                         nodes.peking_union) == ("EmptyBatch", ())


def test_an_empty_root_reverts(anchor: Contract, nodes: Nodes) -> None:
    assert expect_revert(anchor, anchor.functions.anchorRoot(bytes(32), 3),
                         nodes.peking_union) == ("EmptyRoot", ())
