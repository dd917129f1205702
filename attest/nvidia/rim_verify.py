"""Verify a parsed RIM: signer chain to the pinned RIM root, then XML-DSig, as of a given time.

Order and reasons (``VerificationError.reason``):

1. the signer chain (KeyInfo certificates minus a trailing root copy) leads to the pinned
   "NVIDIA CoRIM signing Root CA" and every certificate is valid at ``at``
   (``rim_chain_<x509chain reason>``, e.g. ``rim_chain_expired``);
2. the signer is an end-entity P-384 key allowed to sign (``rim_signer``);
3. signxml checks the enveloped signature with that signer only — pinned to ECDSA-SHA384,
   SHA-384 digests, exactly one Reference, Signature a child of the root (``rim_signature``);
4. no field of a ``VerifiedRim`` comes from outside the signature (``rim_signature_wrapping``):
   ``verify_rim_bytes`` (and ``RimVerifier`` given bytes) parses the document once and requires
   the canonical form of the parsed tree minus its Signature to equal, byte for byte, the content
   signxml digested and verified; ``verify_rim``, given a ``Rim`` object it did not parse itself,
   reads the identity and measurements again from the signed content and requires equality with
   the object's fields.

The caller runs revocation (OCSP) on ``VerifiedRim.chain``. ``RimVerifier`` remembers verified
RIMs by their exact bytes and reuses an answer only for a time inside the window in which the
whole chain is valid, so a hit is always what a full check would say.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

from attest import roots
from attest.concurrency import Deferred, defer
from attest.errors import ChainError, VerificationError
from attest.nvidia.rim_parse import (
    DS_NS,
    CertificateMemo,
    Rim,
    RimBody,
    RimParseError,
    hardened_parser,
    parse_rim_with_content,
    read_body,
)
from attest.timeutil import require_aware
from attest.x509chain import (
    ChainCache,
    VerifiedChain,
    check_end_entity,
    describe,
    verify_chain,
)

#: Verified RIMs remembered by one ``RimVerifier`` (a fleet uses a handful of driver/VBIOS pairs).
DEFAULT_RIM_CACHE_ENTRIES = 256

#: The only algorithms a NVIDIA RIM signature may use.
_SIGNATURE_METHODS = frozenset({SignatureMethod.ECDSA_SHA384})
_DIGEST_ALGORITHMS = frozenset({DigestAlgorithm.SHA384})


def _signature_config(at: datetime) -> SignatureConfiguration:
    """signxml's expectations: our algorithms, one reference, Signature a child of the root."""
    return SignatureConfiguration(
        require_x509=True,
        location="./",
        expect_references=1,
        signature_methods=_SIGNATURE_METHODS,
        digest_algorithms=_DIGEST_ALGORITHMS,
        ignore_ambiguous_key_info=False,
        verification_time=at,
    )


class RimVerificationError(VerificationError):
    """A RIM failed a signature, signer or content check. ``reason`` starts with ``rim_``."""


class RimChainError(ChainError):
    """The RIM signer chain did not lead to the pinned RIM root at the verification time.

    ``reason`` is ``rim_chain_`` + the x509chain reason; ``chain_reason`` keeps the latter.
    """

    def __init__(self, message: str, *, chain_reason: str):
        self.chain_reason = chain_reason
        super().__init__(message, reason=f"rim_chain_{chain_reason}")


@dataclass(frozen=True)
class VerifiedRim:
    """A RIM whose signature, signer chain and content all checked out as of some time.

    Valid for every time in [``chain.valid_from``, ``chain.valid_until``]; revocation of
    ``chain`` is still the caller's to check.
    """

    rim: Rim
    chain: VerifiedChain

    @property
    def signer(self) -> x509.Certificate:
        return self.chain.leaf

    @property
    def valid_from(self) -> datetime:
        return self.chain.valid_from

    @property
    def valid_until(self) -> datetime:
        return self.chain.valid_until


def _check_signer(cert: x509.Certificate) -> None:
    """A P-384 end entity allowed to sign (``check_end_entity``: the device leaf's rule too)."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise RimVerificationError(
            f"RIM signer '{describe(cert)}' does not hold a P-384 key", reason="rim_signer"
        )
    try:
        check_end_entity(cert, "RIM signer")
    except ChainError as exc:
        raise RimVerificationError(str(exc), reason="rim_signer") from exc


def _same_content(rim: Rim, body: RimBody) -> bool:
    return (
        rim.body == body
        and rim.tag_id == body.tag_id
        and rim.name == body.name
        and rim.version == body.version
        and rim.product == body.product
        and rim.manufacturer == body.manufacturer
        and rim.manufacturer_id == body.manufacturer_id
        and rim.platform_model == body.platform_model
        and rim.firmware_manufacturer == body.firmware_manufacturer
        and rim.firmware_manufacturer_id == body.firmware_manufacturer_id
        and rim.edition == body.edition
        and rim.revision == body.revision
        and rim.swid_version == body.swid_version
        and rim.tag_version == body.tag_version
        and rim.entity_name == body.entity_name
        and rim.measurements == body.measurements
    )


def _signxml(raw: bytes, signer: x509.Certificate, at: datetime) -> VerifyResult:
    """Run signxml on ``raw`` with ``signer`` only. The result's ``signed_data`` is the bytes the
    Reference digest covers (canonical document minus the Signature); ``signed_xml`` is those
    bytes parsed again by signxml."""
    config = _signature_config(at)
    try:
        result = XMLVerifier().verify(
            raw, x509_cert=signer, parser=hardened_parser(), expect_config=config
        )
    except (
        SignXMLException,
        etree.LxmlError,
        InvalidSignature,
        UnsupportedAlgorithm,
        ValueError,
        TypeError,
    ) as exc:
        raise RimVerificationError(
            f"RIM XML signature does not verify with signer '{describe(signer)}' "
            f"({type(exc).__name__})",
            reason="rim_signature",
        ) from exc
    if isinstance(result, list):  # expect_references=1 returns one result; kept as a guard
        raise RimVerificationError(
            "RIM signature has more than one reference", reason="rim_signature"
        )
    if not isinstance(result.signed_data, bytes):
        raise RimVerificationError(
            "the signed content is not a document", reason="rim_signature_wrapping"
        )
    return result


def _check_signed_content(content: bytes, signed: bytes) -> None:
    """Fast path: ``content`` is the canonical form of the tree the RIM's fields were read from
    (``parse_rim_with_content``); equal bytes prove those fields are the signed ones."""
    if content != signed:
        raise RimVerificationError(
            "the content the signature covers is not the document that was parsed",
            reason="rim_signature_wrapping",
        )


def _check_reread(rim: Rim, result: VerifyResult) -> None:
    """Slow path, for a ``Rim`` object whose provenance we did not see: read every field again
    from the signed content itself (as signxml parsed it) and require equality."""
    signed = result.signed_xml
    if signed is None or not isinstance(signed.tag, str):
        raise RimVerificationError(
            "the signed content is not an XML element", reason="rim_signature_wrapping"
        )
    if signed.find(f".//{{{DS_NS}}}Signature") is not None:
        raise RimVerificationError(
            "the signed content still holds a signature", reason="rim_signature_wrapping"
        )
    try:
        body = read_body(signed)
    except RimParseError as exc:
        raise RimVerificationError(
            f"the signed content is not a valid RIM: {exc}", reason="rim_signature_wrapping"
        ) from exc
    if not _same_content(rim, body):
        raise RimVerificationError(
            "the RIM's fields differ from the content its signature covers",
            reason="rim_signature_wrapping",
        )


def _verify(
    rim: Rim,
    content: bytes | None,
    *,
    at: datetime,
    root: x509.Certificate | None,
    chain_cache: ChainCache | None,
) -> VerifiedRim:
    return _start(rim, content, at=at, root=root, chain_cache=chain_cache)()


def _start(
    rim: Rim,
    content: bytes | None,
    *,
    at: datetime,
    root: x509.Certificate | None,
    chain_cache: ChainCache | None,
    chain_started: Callable[[], None] | None = None,
) -> Callable[[], VerifiedRim]:
    """Start ``_verify``: signxml runs here and now, the signer chain on the pool; the returned
    call waits for the chain and gives the result (or raises), in the sequential order.
    ``chain_started`` is called once the signer chain is on the pool, before signxml."""
    at = require_aware(at)
    trust = root if root is not None else roots.nvidia_rim_root()
    what = f"RIM signer chain of {rim.name} {rim.version}"

    def signer_chain() -> VerifiedChain:
        if chain_cache is not None:
            return chain_cache.verify(rim.signer_chain, root=trust, at=at, what=what)
        return verify_chain(rim.signer_chain, root=trust, at=at, what=what)

    # The chain's signatures (GIL-free) are checked on the pool while signxml's Python XML
    # work runs here with the first KeyInfo certificate, the one the chain must vouch for.
    # signxml's outcome is only looked at once the chain and the signer passed, so the error
    # raised is the one the sequential order gives: chain, then signer, then signature. (A RIM
    # whose chain fails thus costs one signxml pass more than before: bounded, like the parse.)
    chain_job = defer(signer_chain)
    if chain_started is not None:
        chain_started()
    xml_job: Deferred[VerifyResult] | None = None
    if rim.signer_chain:
        xml_job = Deferred(partial(_signxml, rim.raw, rim.signer_chain[0], at))
        xml_job.run_here()

    def finish() -> VerifiedRim:
        try:
            chain = chain_job.result()
        except ChainError as exc:
            raise RimChainError(str(exc), chain_reason=exc.reason) from exc
        _check_signer(chain.leaf)
        result = xml_job.result() if xml_job is not None else _signxml(rim.raw, chain.leaf, at)
        if content is not None:
            _check_signed_content(content, result.signed_data)
        else:
            _check_reread(rim, result)
        return VerifiedRim(rim=rim, chain=chain)

    return finish


def verify_rim(
    rim: Rim,
    *,
    at: datetime,
    root: x509.Certificate | None = None,
    chain_cache: ChainCache | None = None,
) -> VerifiedRim:
    """Verify ``rim`` as of ``at`` against ``root`` (default: the pinned NVIDIA RIM root).

    ``rim`` may come from anywhere (even be edited after parsing), so its fields are read again
    from the content the signature covers and compared. Given the bytes, ``verify_rim_bytes``
    does the same checks with one parse.
    """
    return _verify(rim, None, at=at, root=root, chain_cache=chain_cache)


def verify_rim_bytes(
    data: bytes,
    *,
    at: datetime,
    root: x509.Certificate | None = None,
    chain_cache: ChainCache | None = None,
) -> VerifiedRim:
    """Parse and verify raw RIM bytes as of ``at``; raise ``RimParseError`` or a verification
    error. The document is read once: its fields are proven to be the signed ones by comparing
    the canonical form of the parsed tree with the bytes signxml verified."""
    rim, content = parse_rim_with_content(data)
    return _verify(rim, content, at=at, root=root, chain_cache=chain_cache)


class RimVerifier:
    """``verify_rim`` with memory: a RIM seen before is answered from its exact bytes.

    A hit needs the same bytes and a time inside the remembered chain window; failures are not
    remembered. Bounded (LRU) and thread-safe.
    """

    def __init__(
        self,
        *,
        root: x509.Certificate | None = None,
        chain_cache: ChainCache | None = None,
        max_entries: int = DEFAULT_RIM_CACHE_ENTRIES,
    ) -> None:
        self._root = root if root is not None else roots.nvidia_rim_root()
        self._chain_cache = chain_cache
        self._certificates = CertificateMemo()
        self._max = max_entries
        self._entries: OrderedDict[bytes, VerifiedRim] = OrderedDict()
        self._lock = threading.Lock()

    def _lookup(self, raw: bytes, at: datetime) -> VerifiedRim | None:
        with self._lock:
            hit = self._entries.get(raw)
            if hit is not None:
                self._entries.move_to_end(raw)
        if hit is not None and hit.valid_from <= at <= hit.valid_until:
            return hit
        return None

    def remembered(self, data: bytes, *, at: datetime) -> VerifiedRim | None:
        """What ``verify(data, at=at)`` answers from memory, or None (it would do the work)."""
        return self._lookup(data, require_aware(at))

    def verify(self, rim: Rim | bytes, *, at: datetime) -> VerifiedRim:
        """Verify a parsed RIM or raw RIM bytes (parsed here) as of ``at``."""
        at = require_aware(at)
        if isinstance(rim, bytes):
            return self.begin(rim, at=at)()
        hit = self._lookup(rim.raw, at)
        if hit is not None and hit.rim == rim:
            return hit
        return self._remember(
            rim.raw, verify_rim(rim, at=at, root=self._root, chain_cache=self._chain_cache)
        )

    @property
    def root(self) -> x509.Certificate:
        """The pinned RIM root: a verified chain is ``(*rim.signer_chain, root)``."""
        return self._root

    def begin(
        self,
        data: bytes,
        *,
        at: datetime,
        on_parsed: Callable[[Rim], None] | None = None,
    ) -> Callable[[], VerifiedRim]:
        """``verify(data, at=at)`` in two halves, so a caller can start several RIMs before
        waiting on any: the parse and signxml's XML work run here and now (``RimParseError``
        raised here), the signer chain's signatures on the shared pool; the returned call
        waits for them and returns the VerifiedRim or raises, exactly as ``verify`` would.

        ``on_parsed`` is called with the parsed RIM once its signer chain is on the pool and
        before signxml runs (not for a remembered RIM), so a caller can start work that needs
        only the signer chain (its OCSP checks) while this thread is busy with the XML. It must
        not raise.
        """
        at = require_aware(at)
        hit = self._lookup(data, at)
        if hit is not None:
            return lambda: hit
        rim, content = parse_rim_with_content(data, certificates=self._certificates)
        finish = _start(
            rim,
            content,
            at=at,
            root=self._root,
            chain_cache=self._chain_cache,
            chain_started=partial(on_parsed, rim) if on_parsed is not None else None,
        )
        return lambda: self._remember(data, finish())

    def _remember(self, raw: bytes, result: VerifiedRim) -> VerifiedRim:
        with self._lock:
            self._entries[raw] = result
            self._entries.move_to_end(raw)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return result

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
