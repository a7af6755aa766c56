// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title Yilian access log: an append-only record of who touched which patient's data.
/// @notice Every FHIR interaction becomes one entry. Entries are written in batches by the
/// hospital node holding WRITER_ROLE and live only in logs: nothing here can be changed or
/// removed once mined, not even by the admin. No personal data: only keyed hashes.
///
/// Entry format (65 bytes, packed back to back in `recordBatch`):
///   bytes  0..31  entryHash    hash of the canonical audit entry (the AuditEvent's who, what,
///                              when, why and outcome; see docs/chain.md)
///   bytes 32..63  patientHash  keyed hash (HMAC) of the patient whose data was touched
///   byte  64      action       1 create, 2 read, 3 update, 4 delete, 5 execute (AuditEvent.action)
/// Time is the block's: the entry's own recorded time is committed in entryHash, and the block
/// timestamp bounds when the entry became immutable.
contract AuditLog is AccessControl {
    bytes32 public constant WRITER_ROLE = keccak256("WRITER_ROLE");
    uint256 public constant ENTRY_SIZE = 65;
    uint256 public constant MAX_BATCH_ENTRIES = 1000;

    /// @notice Entries recorded so far; entry i of a batch has sequence number firstSeq + i.
    /// Lets a verifier compare the chain's count with the hospital's without scanning logs.
    uint256 public entryCount;

    /// @notice One audit entry. Anonymous so both hashes fit the topics (patient, entry) at the
    /// price of two topics: a third topic plus the 16-gas calldata bytes would exceed the budget
    /// of 3,000 gas per entry. Find an entry with topics [patientHash, entryHash].
    event AccessRecorded(bytes32 indexed patientHash, bytes32 indexed entryHash, uint8 action) anonymous;

    /// @notice Closes each batch, after its entries: which node wrote it and where it starts.
    event BatchRecorded(address indexed writer, uint256 indexed firstSeq, uint256 entries);

    error EmptyBatch();
    error BatchNotWholeEntries(uint256 length, uint256 entrySize);
    error BatchTooLarge(uint256 entries, uint256 maxEntries);

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @param packed entries in the 65-byte format above, at most MAX_BATCH_ENTRIES of them.
    function recordBatch(bytes calldata packed) external onlyRole(WRITER_ROLE) {
        uint256 length = packed.length;
        if (length == 0) revert EmptyBatch();
        if (length % ENTRY_SIZE != 0) revert BatchNotWholeEntries(length, ENTRY_SIZE);
        uint256 entries = length / ENTRY_SIZE;
        if (entries > MAX_BATCH_ENTRIES) revert BatchTooLarge(entries, MAX_BATCH_ENTRIES);

        uint256 firstSeq = entryCount;
        entryCount = firstSeq + entries;

        // Assembly because slicing calldata in Solidity costs bounds checks per field, and the
        // log data (the action as one ABI word) fits the scratch space without memory growth.
        assembly ("memory-safe") {
            let p := packed.offset
            let end := add(p, length)
            for {} lt(p, end) { p := add(p, 65) } {
                mstore(0x00, shr(248, calldataload(add(p, 64))))
                log2(0x00, 0x20, calldataload(add(p, 32)), calldataload(p))
            }
        }
        emit BatchRecorded(msg.sender, firstSeq, entries);
    }
}
