"""The composite session binding: one value ties every device's evidence to one session.

An enclave is a confidential VM plus the GPUs it drives. Each produces its own report, so an
attacker who controls the host could pair a genuine CPU report from one session with GPU
reports from another (or from a different machine). To prevent that, every report of a session
carries a value derived from the same three inputs:

* the broker's single-use **nonce** (freshness: the evidence was made after the broker asked),
* the enclave's ephemeral **public key** (the key the result will attest and keys go to),
* a **protocol label** (domain separation between lessee protocols and versions).

The CPU report's 64-byte ``report_data`` is SHA-512 over a length-prefixed encoding of the three
inputs under a fixed context string; each GPU's 32-byte SPDM requester nonce is SHA-256 over a
second context string and that ``report_data``. Length prefixes make the encoding injective
(no two input triples collide by shifting bytes between fields). See docs/binding.md.

**Version 2** (label ``lessee/v2/key-release``, its own context strings) adds a fourth input:
the **device state** the agent read from NVML (GPU confidential-computing mode, DevTools mode)
and how many GPUs and NVSwitches it collected evidence from. No signed report carries those
flags, and no report says how many others there are; binding them into ``report_data`` (and so
into every GPU's SPDM nonce) makes the CPU and GPU reports authenticate them, so whoever relays
the evidence can neither flip a flag nor drop a device's evidence (say, the one GPU whose
firmware would fail) without the binding check failing. The agent is inside the CVM and
reads the flags *before* it asks for any report. Version 1 stays as it was, byte for byte, for
logs and agents made before; which version a label means is fixed by the label
(:func:`binding_version`), and a version-2 label without a device state is an error, never a
silent version 1.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from attest.errors import InputError

#: Context strings; changing either is a protocol version change.
REPORT_DATA_CONTEXT = b"lessee/v1/binding/report-data"
GPU_NONCE_CONTEXT = b"lessee/v1/binding/gpu-nonce"
#: Version 2's context strings: distinct from version 1's, so no v1 input can collide with a
#: v2 input even if their encodings did.
REPORT_DATA_CONTEXT_V2 = b"lessee/v2/binding/report-data"
GPU_NONCE_CONTEXT_V2 = b"lessee/v2/binding/gpu-nonce"
#: The key-release protocol's labels. Version 1 binds (nonce, key); version 2 binds the device
#: state too. ``DEFAULT_PROTOCOL_LABEL`` stays version 1: it is ``derive_binding``'s default
#: and the label of every log entry made before version 2 (the log does not record labels).
PROTOCOL_LABEL_V1 = "lessee/v1/key-release"
PROTOCOL_LABEL_V2 = "lessee/v2/key-release"
DEFAULT_PROTOCOL_LABEL = PROTOCOL_LABEL_V1
#: A label under this prefix is a version-2 label (it must come with a device state).
V2_LABEL_PREFIX = "lessee/v2/"

#: The broker's nonces are 32 random bytes; shorter ones would weaken freshness.
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
#: Long enough for an ML-KEM-768+X25519 public key (1216 bytes) with its suite tag.
MAX_PUBLIC_KEY_BYTES = 4096
MAX_LABEL_BYTES = 128
#: Devices of one kind a device state may count: an evidence bundle's own bound
#: (``attest.bundle.MAX_DEVICES``, checked equal in tests; this module imports nothing of it).
MAX_BOUND_DEVICES = 64

REPORT_DATA_BYTES = 64
GPU_NONCE_BYTES = 32


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


@dataclass(frozen=True)
class DeviceState:
    """The device state the agent reads outside any signed report (NVML), bound by version 2.

    ``cc_mode_on``: every GPU is in confidential-computing mode; ``devtools_on``: some GPU is
    in DevTools (debug) mode. These are exactly the evidence bundle's unsigned fields
    (``EvidenceBundle.cc_mode_on``/``devtools_on``); everything else in a bundle is signed by
    its device or vendor, or checked against what is (a device's declared ``arch`` is compared
    with the architecture its signed certificate chain names). ``gpus`` and ``switches``: how
    many GPUs and NVSwitches the agent collected evidence from. Each report carries the
    session's binding, so none can be added; the counts make dropping one visible too.
    """

    cc_mode_on: bool
    devtools_on: bool
    gpus: int
    switches: int

    def __post_init__(self) -> None:
        # ``True``-like integers would encode the same; only real booleans are state.
        if type(self.cc_mode_on) is not bool or type(self.devtools_on) is not bool:
            raise InputError("device state flags must be booleans")
        for what, n in (("gpus", self.gpus), ("switches", self.switches)):
            if type(n) is not int or not 0 <= n <= MAX_BOUND_DEVICES:
                raise InputError(f"device state {what} must be an integer 0..{MAX_BOUND_DEVICES}")

    def encode(self) -> bytes:
        """The canonical encoding (6 bytes): one byte per flag, 0x00 or 0x01 (``cc_mode_on``,
        ``devtools_on``), then the GPU and NVSwitch counts as 2-byte big-endian integers.
        Fixed length, so injective; it is length-prefixed in the derivation like every other
        input, so a later version can add fields."""
        return bytes((int(self.cc_mode_on), int(self.devtools_on))) + (
            self.gpus.to_bytes(2, "big") + self.switches.to_bytes(2, "big")
        )


def binding_version(protocol_label: str) -> int:
    """2 for a label under ``lessee/v2/``, else 1 (the label alone decides: a verifier
    never guesses the version from the evidence)."""
    return 2 if protocol_label.startswith(V2_LABEL_PREFIX) else 1


def _check_inputs(nonce: bytes, enclave_public_key: bytes, protocol_label: str) -> bytes:
    """Bounds shared by both versions; returns the encoded label."""
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise InputError(
            f"nonce must be {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes, got {len(nonce)}"
        )
    if not 0 < len(enclave_public_key) <= MAX_PUBLIC_KEY_BYTES:
        raise InputError(f"enclave public key must be 1..{MAX_PUBLIC_KEY_BYTES} bytes")
    label = _label_bytes(protocol_label)
    if not 0 < len(label) <= MAX_LABEL_BYTES:
        raise InputError(f"protocol label must be 1..{MAX_LABEL_BYTES} bytes")
    return label


def _label_bytes(label: str) -> bytes:
    """The label's UTF-8; a string that has none (a lone surrogate, which JSON's ``\\ud800``
    escapes can produce) is an ``InputError``, not a ``UnicodeEncodeError``."""
    try:
        return label.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("protocol label is not valid text") from None


@dataclass(frozen=True)
class SessionBinding:
    """The values one session's reports must carry."""

    report_data: bytes
    gpu_nonce: bytes

    def matches_report_data(self, value: bytes) -> bool:
        return len(value) == REPORT_DATA_BYTES and hmac.compare_digest(value, self.report_data)

    def matches_gpu_nonce(self, value: bytes) -> bool:
        return len(value) == GPU_NONCE_BYTES and hmac.compare_digest(value, self.gpu_nonce)


def derive_binding(
    nonce: bytes, enclave_public_key: bytes, protocol_label: str = DEFAULT_PROTOCOL_LABEL
) -> SessionBinding:
    """Derive the version-1 CPU report_data and GPU SPDM nonce for one session.

    A version-2 label is refused (``InputError``): its binding needs the device state
    (:func:`derive_binding_v2`, or :func:`derive_session_binding` for either version).
    """
    label = _check_inputs(nonce, enclave_public_key, protocol_label)
    if binding_version(protocol_label) != 1:
        raise InputError("a version-2 protocol label needs the device state")
    report_data = hashlib.sha512(
        _lp(REPORT_DATA_CONTEXT) + _lp(label) + _lp(nonce) + _lp(enclave_public_key)
    ).digest()
    gpu_nonce = hashlib.sha256(_lp(GPU_NONCE_CONTEXT) + report_data).digest()
    return SessionBinding(report_data=report_data, gpu_nonce=gpu_nonce)


def derive_binding_v2(
    nonce: bytes,
    enclave_public_key: bytes,
    state: DeviceState,
    protocol_label: str = PROTOCOL_LABEL_V2,
) -> SessionBinding:
    """Derive the version-2 binding, which also covers the relayed device state::

    report_data = SHA-512(lp(ctx_v2) || lp(label) || lp(nonce) || lp(key) || lp(state))
    gpu_nonce   = SHA-256(lp(gpu_ctx_v2) || report_data)
    """
    label = _check_inputs(nonce, enclave_public_key, protocol_label)
    if binding_version(protocol_label) != 2:
        raise InputError(f"a version-2 binding needs a label under {V2_LABEL_PREFIX!r}")
    if not isinstance(state, DeviceState):
        raise InputError("a version-2 binding needs the device state")
    report_data = hashlib.sha512(
        _lp(REPORT_DATA_CONTEXT_V2)
        + _lp(label)
        + _lp(nonce)
        + _lp(enclave_public_key)
        + _lp(state.encode())
    ).digest()
    gpu_nonce = hashlib.sha256(_lp(GPU_NONCE_CONTEXT_V2) + report_data).digest()
    return SessionBinding(report_data=report_data, gpu_nonce=gpu_nonce)


def derive_session_binding(
    nonce: bytes, enclave_public_key: bytes, protocol_label: str, state: DeviceState | None
) -> SessionBinding:
    """The binding for ``protocol_label``'s version: version 2 binds ``state`` (which must be
    given: ``None`` is an ``InputError``, never a fallback to version 1); version 1 does not
    bind it (a verifier given v1 evidence learns the flags from no signed report)."""
    if binding_version(protocol_label) == 2:
        if state is None:
            raise InputError("a version-2 protocol label needs the device state")
        return derive_binding_v2(nonce, enclave_public_key, state, protocol_label)
    return derive_binding(nonce, enclave_public_key, protocol_label)


#: The EAR claim (in ``AttestationResult.extra``) in which a broker states what a version-2
#: binding bound: ``{"label": str, "cc_mode_on": bool, "devtools_on": bool, "gpus": int,
#: "switches": int}``. It lets the
#: release (which has no evidence) and the audit replay derive the same binding as the attest
#: did; a version-1 result has no such claim.
BINDING_CLAIM = "ear.lessee.binding"


_CLAIM_KEYS = ("label", "cc_mode_on", "devtools_on", "gpus", "switches")


def binding_claim(protocol_label: str, state: DeviceState) -> dict[str, object]:
    return {
        "label": protocol_label,
        "cc_mode_on": state.cc_mode_on,
        "devtools_on": state.devtools_on,
        "gpus": state.gpus,
        "switches": state.switches,
    }


def parse_binding_claim(value: object) -> tuple[str, DeviceState]:
    """The (version-2 label, device state) of a ``BINDING_CLAIM`` value; ``InputError`` for any
    other shape (exactly these five keys, a version-2 label of bounded size, booleans, bounded
    integers)."""
    if not isinstance(value, dict) or set(value) != set(_CLAIM_KEYS):
        raise InputError(f"{BINDING_CLAIM} must hold exactly {', '.join(_CLAIM_KEYS)}")
    label = value["label"]
    if (
        not isinstance(label, str)
        or not 0 < len(_label_bytes(label)) <= MAX_LABEL_BYTES
        or binding_version(label) != 2
    ):
        raise InputError(f"{BINDING_CLAIM} names no version-2 label")
    return label, DeviceState(
        value["cc_mode_on"], value["devtools_on"], value["gpus"], value["switches"]
    )
