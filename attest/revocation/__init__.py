"""Certificate revocation for every chain lessee verifies (today: OCSP, RFC 6960).

Pure like the rest of ``attest``: responses come in as bytes (stapled collateral, or fetched by
``agent.ocsp_fetch``), time is an argument, the verdict is an :class:`OcspCheck`. See
``docs/revocation.md`` for the modes and the checks.
"""

from attest.revocation.ocsp import (
    CLOCK_SKEW,
    DEFAULT_MAX_AGE,
    MAX_OCSP_RESPONSE_BYTES,
    NVIDIA_DEVICE_OCSP_INDICES,
    NVIDIA_OCSP_NONCE_BYTES,
    OcspCache,
    OcspCheck,
    OcspPrefetch,
    OcspSource,
    OcspStatus,
    RevocationMode,
    StapledOcsp,
    build_ocsp_request,
    cert_id_key,
    check_chain_revocation,
    check_ocsp_response,
    nvidia_device_ocsp_indices,
    nvidia_rim_ocsp_indices,
)

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_MAX_AGE",
    "MAX_OCSP_RESPONSE_BYTES",
    "NVIDIA_DEVICE_OCSP_INDICES",
    "NVIDIA_OCSP_NONCE_BYTES",
    "OcspCache",
    "OcspCheck",
    "OcspPrefetch",
    "OcspSource",
    "OcspStatus",
    "RevocationMode",
    "StapledOcsp",
    "build_ocsp_request",
    "cert_id_key",
    "check_chain_revocation",
    "check_ocsp_response",
    "nvidia_device_ocsp_indices",
    "nvidia_rim_ocsp_indices",
]
