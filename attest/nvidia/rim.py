"""NVIDIA reference integrity manifests (RIMs): the public API in one place.

* ``parse_rim`` (``rim_parse``): strict, bounded SWID parsing; ``RimParseError``.
* ``verify_rim_bytes`` / ``verify_rim`` / ``RimVerifier`` (``rim_verify``): signer chain to the
  pinned RIM root and XML-DSig as of a time, the fields proven to be the signed content (one
  parse and a canonical-bytes comparison from bytes; a re-read for a ``Rim`` object);
  ``RimChainError``, ``RimVerificationError`` with ``rim_*`` reasons.
* ``driver_rim_id`` / ``vbios_rim_id`` / ``switch_bios_rim_id``, ``RimSource``,
  ``RimCollection`` (``rim_select``): NVIDIA's RIM ids and lookup by id; ``RimParseCache``
  parses each distinct RIM once for a long-lived caller (a broker).
* ``compare_measurements`` / ``compare_single`` (``rim_compare``): golden vs runtime by NVIDIA's
  rules, for a driver + VBIOS pair or one RIM alone (NVSwitch BIOS).

See docs/rim.md for the checks one by one and how they differ from NVIDIA's verifier.
"""

from __future__ import annotations

from attest.nvidia.rim_compare import (
    NVDEC_RIM_INDEX,
    MeasurementComparison,
    MeasurementMismatch,
    compare_measurements,
    compare_single,
)
from attest.nvidia.rim_parse import (
    MAX_RIM_BYTES,
    Rim,
    RimKind,
    RimMeasurement,
    RimParseError,
    parse_rim,
)
from attest.nvidia.rim_select import (
    RimCollection,
    RimIdInfo,
    RimParseCache,
    RimSelectionError,
    RimSource,
    canonical_rim_id,
    driver_rim_id,
    parse_rim_id,
    switch_bios_rim_id,
    vbios_rim_id,
)
from attest.nvidia.rim_verify import (
    RimChainError,
    RimVerificationError,
    RimVerifier,
    VerifiedRim,
    verify_rim,
    verify_rim_bytes,
)

__all__ = [
    "MAX_RIM_BYTES",
    "NVDEC_RIM_INDEX",
    "MeasurementComparison",
    "MeasurementMismatch",
    "Rim",
    "RimChainError",
    "RimCollection",
    "RimIdInfo",
    "RimKind",
    "RimMeasurement",
    "RimParseCache",
    "RimParseError",
    "RimSelectionError",
    "RimSource",
    "RimVerificationError",
    "RimVerifier",
    "VerifiedRim",
    "canonical_rim_id",
    "compare_measurements",
    "compare_single",
    "driver_rim_id",
    "parse_rim",
    "parse_rim_id",
    "switch_bios_rim_id",
    "vbios_rim_id",
    "verify_rim",
    "verify_rim_bytes",
]
