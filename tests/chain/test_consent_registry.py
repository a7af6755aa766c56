"""ConsentRegistry: every decision an event, the current one readable from storage (issue 5)."""

from __future__ import annotations

from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from tests.chain.conftest import Nodes, expect_revert, keyed, send

GRANTED, DENIED, REVOKED = 1, 2, 3

# 张三 (身份证号 11010519491231002X) and the 协和 patient app asking for his lab results.
PATIENT = keyed("Patient/11010519491231002X")
APP = keyed("Client/xiehe-patient-app")
SCOPE = Web3.keccak(text="patient/Observation.rs?category=laboratory")
CONSENT = '{"resourceType":"Consent","id":"zhangsan-xiehe-app","meta":{"versionId":"%s"}}'
CONSENT_V1 = Web3.keccak(text=CONSENT % 1)
CONSENT_V2 = Web3.keccak(text=CONSENT % 2)


def now(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def test_a_grant_is_readable_from_storage_and_emitted(
        w3: Web3, consent_registry: Contract, nodes: Nodes) -> None:
    expires = now(w3) + 365 * 86400
    receipt = send(w3, consent_registry.functions.decide(
        PATIENT, APP, SCOPE, GRANTED, expires, CONSENT_V1), nodes.peking_union)

    status, expires_at, decided_at, decision = consent_registry.functions.consentOf(
        PATIENT, APP, SCOPE).call()
    block_time = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert (status, expires_at, decided_at, decision) == (GRANTED, expires, block_time, CONSENT_V1)
    assert consent_registry.functions.isGranted(PATIENT, APP, SCOPE).call() is True

    (event,) = consent_registry.events.ConsentDecided().process_receipt(receipt, errors=DISCARD)
    assert dict(event.args) == {"patientHash": PATIENT, "granteeHash": APP, "scopeHash": SCOPE,
                                "status": GRANTED, "expiresAt": expires,
                                "decisionHash": CONSENT_V1}


def test_a_revocation_replaces_the_grant_and_both_decisions_stay_on_record(
        w3: Web3, consent_registry: Contract, nodes: Nodes) -> None:
    send(w3, consent_registry.functions.decide(PATIENT, APP, SCOPE, GRANTED, 0, CONSENT_V1),
         nodes.peking_union)
    send(w3, consent_registry.functions.decide(PATIENT, APP, SCOPE, REVOKED, 0, CONSENT_V2),
         nodes.peking_union)

    status, _, _, decision = consent_registry.functions.consentOf(PATIENT, APP, SCOPE).call()
    assert (status, decision) == (REVOKED, CONSENT_V2)
    assert consent_registry.functions.isGranted(PATIENT, APP, SCOPE).call() is False
    history = consent_registry.events.ConsentDecided().get_logs(
        from_block=0, argument_filters={"patientHash": PATIENT})
    assert [(e.args.status, e.args.decisionHash) for e in history] == [
        (GRANTED, CONSENT_V1), (REVOKED, CONSENT_V2)]


def test_a_grant_lapses_at_its_expiry(w3: Web3, consent_registry: Contract, nodes: Nodes) -> None:
    expires = now(w3) + 60
    send(w3, consent_registry.functions.decide(PATIENT, APP, SCOPE, GRANTED, expires, CONSENT_V1),
         nodes.peking_union)
    assert consent_registry.functions.isGranted(PATIENT, APP, SCOPE).call() is True
    w3.provider.make_request("evm_increaseTime", [61])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert consent_registry.functions.isGranted(PATIENT, APP, SCOPE).call() is False


def test_consent_is_kept_per_grantee_and_scope(
        w3: Web3, consent_registry: Contract, nodes: Nodes) -> None:
    other_scope = Web3.keccak(text="patient/MedicationRequest.rs")
    send(w3, consent_registry.functions.decide(PATIENT, APP, SCOPE, GRANTED, 0, CONSENT_V1),
         nodes.peking_union)
    assert consent_registry.functions.isGranted(PATIENT, APP, other_scope).call() is False
    assert consent_registry.functions.isGranted(
        PATIENT, keyed("Client/huaxi-research"), SCOPE).call() is False
    assert consent_registry.functions.consentOf(PATIENT, APP, other_scope).call()[0] == 0


def test_a_node_without_the_writer_role_cannot_record_a_decision(
        consent_registry: Contract, nodes: Nodes) -> None:
    name, args = expect_revert(consent_registry, consent_registry.functions.decide(
        PATIENT, APP, SCOPE, GRANTED, 0, CONSENT_V1), nodes.outsider)
    assert (name, args) == ("AccessControlUnauthorizedAccount",
                            (nodes.outsider, consent_registry.functions.WRITER_ROLE().call()))


def test_a_grant_that_has_already_expired_reverts(
        w3: Web3, consent_registry: Contract, nodes: Nodes) -> None:
    past = now(w3) - 1
    name, args = expect_revert(consent_registry, consent_registry.functions.decide(
        PATIENT, APP, SCOPE, GRANTED, past, CONSENT_V1), nodes.peking_union)
    assert name == "ExpiryInThePast"
    assert args[0] == past


def test_a_decision_must_say_what_was_decided(consent_registry: Contract, nodes: Nodes) -> None:
    name, _ = expect_revert(consent_registry, consent_registry.functions.decide(
        PATIENT, APP, SCOPE, 0, 0, CONSENT_V1), nodes.peking_union)
    assert name == "NoDecision"
