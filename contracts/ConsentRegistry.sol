// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title Yilian consent registry: the current consent of each patient to each grantee and scope.
/// @notice Every decision (a patient approving or withdrawing an app's scopes, a FHIR Consent
/// created, changed or revoked) is an event; the latest decision per (patient, grantee, scope) is
/// kept in storage so contracts and third parties can query it on chain (or prove it with
/// eth_getProof). Only keyed hashes: patient and grantee are HMACs, scope is the hash of the
/// scope string, decisionHash the hash of the canonical FHIR Consent.
contract ConsentRegistry is AccessControl {
    bytes32 public constant WRITER_ROLE = keccak256("WRITER_ROLE");

    enum Status {
        None,
        Granted,
        Denied,
        Revoked
    }

    struct Consent {
        Status status;
        uint64 expiresAt; // unix seconds; 0 = no expiry
        uint64 decidedAt; // block timestamp of the decision
        bytes32 decisionHash;
    }

    mapping(bytes32 key => Consent) private _consents;

    event ConsentDecided(
        bytes32 indexed patientHash,
        bytes32 indexed granteeHash,
        bytes32 indexed scopeHash,
        Status status,
        uint64 expiresAt,
        bytes32 decisionHash
    );

    error NoDecision();
    error ExpiryInThePast(uint64 expiresAt, uint256 blockTime);

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    function key(bytes32 patientHash, bytes32 granteeHash, bytes32 scopeHash) public pure returns (bytes32) {
        return keccak256(abi.encode(patientHash, granteeHash, scopeHash));
    }

    /// @notice Records a decision, replacing the current state for (patient, grantee, scope).
    function decide(
        bytes32 patientHash,
        bytes32 granteeHash,
        bytes32 scopeHash,
        Status status,
        uint64 expiresAt,
        bytes32 decisionHash
    ) external onlyRole(WRITER_ROLE) {
        if (status == Status.None) revert NoDecision();
        if (status == Status.Granted && expiresAt != 0 && expiresAt <= block.timestamp) {
            revert ExpiryInThePast(expiresAt, block.timestamp);
        }
        _consents[key(patientHash, granteeHash, scopeHash)] =
            Consent(status, expiresAt, uint64(block.timestamp), decisionHash);
        emit ConsentDecided(patientHash, granteeHash, scopeHash, status, expiresAt, decisionHash);
    }

    function consentOf(bytes32 patientHash, bytes32 granteeHash, bytes32 scopeHash)
        external
        view
        returns (Consent memory)
    {
        return _consents[key(patientHash, granteeHash, scopeHash)];
    }

    /// @notice True while the latest decision is a grant that has not expired.
    function isGranted(bytes32 patientHash, bytes32 granteeHash, bytes32 scopeHash) external view returns (bool) {
        Consent storage c = _consents[key(patientHash, granteeHash, scopeHash)];
        return c.status == Status.Granted && (c.expiresAt == 0 || c.expiresAt > block.timestamp);
    }
}
