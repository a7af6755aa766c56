// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title Yilian anchor: tamper evidence for the clinical data itself.
/// @notice Two ways to anchor, both role-gated and both without personal data:
///  - `anchorVersions`: one event per resource version, (resourceHash, contentHash), where
///    resourceHash is a keyed hash (HMAC) of "type/id/_history/vid" and contentHash the hash of
///    the version's canonical JSON. Packed as 64-byte records, like AuditLog.recordBatch.
///  - `anchorRoot`: the Merkle root of many such pairs, kept in storage with its block time so
///    anyone can ask the contract (or eth_getProof) when a root was anchored.
contract Anchor is AccessControl {
    bytes32 public constant WRITER_ROLE = keccak256("WRITER_ROLE");
    uint256 public constant VERSION_SIZE = 64;
    uint256 public constant MAX_BATCH_VERSIONS = 1000;

    struct RootInfo {
        uint64 anchoredAt; // block timestamp; 0 = never anchored
        uint64 leafCount;
    }

    mapping(bytes32 root => RootInfo) private _roots;

    event VersionAnchored(bytes32 indexed resourceHash, bytes32 indexed contentHash);
    event RootAnchored(bytes32 indexed root, address indexed writer, uint64 leafCount);

    error EmptyBatch();
    error BatchNotWholeVersions(uint256 length, uint256 versionSize);
    error BatchTooLarge(uint256 versions, uint256 maxVersions);
    error EmptyRoot();
    error RootAlreadyAnchored(bytes32 root, uint64 anchoredAt);

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    function anchorVersions(bytes calldata packed) external onlyRole(WRITER_ROLE) {
        uint256 length = packed.length;
        if (length == 0) revert EmptyBatch();
        if (length % VERSION_SIZE != 0) revert BatchNotWholeVersions(length, VERSION_SIZE);
        uint256 versions = length / VERSION_SIZE;
        if (versions > MAX_BATCH_VERSIONS) revert BatchTooLarge(versions, MAX_BATCH_VERSIONS);
        for (uint256 p = 0; p < length; p += VERSION_SIZE) {
            emit VersionAnchored(bytes32(packed[p:p + 32]), bytes32(packed[p + 32:p + 64]));
        }
    }

    function anchorRoot(bytes32 root, uint64 leafCount) external onlyRole(WRITER_ROLE) {
        if (root == bytes32(0) || leafCount == 0) revert EmptyRoot();
        RootInfo storage info = _roots[root];
        if (info.anchoredAt != 0) revert RootAlreadyAnchored(root, info.anchoredAt);
        _roots[root] = RootInfo(uint64(block.timestamp), leafCount);
        emit RootAnchored(root, msg.sender, leafCount);
    }

    function rootInfo(bytes32 root) external view returns (RootInfo memory) {
        return _roots[root];
    }
}
