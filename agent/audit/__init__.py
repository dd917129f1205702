"""The offline auditor: read an exported log bundle and check it against pinned keys.

``bundle`` reads and writes the bundle file; ``verify`` checks the log's structure (signatures,
consistency, inclusion, completeness, blobs). Replaying the appraisals themselves builds on
``verify.AuditResult`` (it exposes the decoded entries and the open bundle for blob access).
"""
