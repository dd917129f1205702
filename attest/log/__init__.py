"""The tamper-evident attestation log, pure parts (no disk, no clock, no network).

* ``merkle``: RFC 6962 / RFC 9162 hashing, roots, inclusion and consistency proofs.
* ``note``: C2SP signed notes (Ed25519 signature type 0x01) and verifier keys.
* ``checkpoint``: C2SP tlog-checkpoint note bodies.
* ``cosignature``: C2SP tlog-cosignature/v1 (Ed25519, type 0x04) witness signatures.
* ``sth``: RFC 6962 TreeHeadSignature note signatures (type 0x05, as used by static-ct logs).
* ``entry``: the canonical, versioned encoding of one log entry (an attest or a release).

Storage and group commit live in ``agent.logstore``; the offline auditor in ``agent.audit``.
"""
