"""NVIDIA GPU and NVSwitch confidential-computing evidence: parse, verify, appraise.

Modules, in pipeline order (see docs/gpu-verifier.md for every check):

* ``evidence``: evidence containers (SDK JSON, hex, binary, PEM chains) -> ``DeviceEvidence``;
* ``spdm``: strict SPDM 1.1 GET_MEASUREMENTS / MEASUREMENTS parser;
* ``opaque``: NVIDIA opaque-data TLVs (GPU and NVSwitch tables) and ``parse_device_report``;
* ``device``: chain to the pinned root, signature, nonce, FWID binding;
* ``rim`` (with ``rim_parse``, ``rim_verify``, ``rim_select``, ``rim_compare``): RIMs;
* ``topology``: protected-PCIe set consistency;
* ``claims``: NVIDIA claims 3.0 rendering and ``Failure``;
* ``verifier``: ``verify_gpu_evidence``, the pure pipeline over all of the above.
"""
