"""``agent.rpc.convert``: strict, bounded, round-tripping; hostile bytes raise only typed errors."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.broker.service import ReleaseRefusedError, UnknownModelError
from agent.broker.store import NonceError
from agent.rpc import convert
from agent.rpc.broker_service import ERROR_STATUS, INTERNAL_MESSAGE, peer_is_loopback, status_for
from agent.rpc.v1 import broker_pb2, evidence_pb2
from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn, TdxEvidenceIn
from attest.ear import EarError
from attest.errors import InputError, ParseError
from attest.snp.verify import MAX_CRL_BYTES
from tests.conftest import CPU, NVIDIA

#: Real vendor evidence: a Hopper report + chain and a Milan SNP report + its certificates.
HOPPER_REPORT = bytes.fromhex((NVIDIA / "hopper_legacy/attestationReport.txt").read_text().strip())
HOPPER_CHAIN = (NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes()
SNP_REPORT = bytes.fromhex((CPU / "snp/virtee-sev/report_milan.hex").read_text().strip())
SNP_CERTS = (
    (CPU / "snp/virtee-sev/vcek_milan.der").read_bytes(),
    (CPU / "snp/virtee-sev/cert_chain_milan").read_bytes(),
)
BUNDLE = EvidenceBundle(
    cpu=SnpEvidenceIn(SNP_REPORT, SNP_CERTS),
    gpus=(DeviceEvidenceIn("HOPPER", HOPPER_REPORT, HOPPER_CHAIN, ocsp_responses=(b"o",)),),
    cc_mode_on=True,
    devtools_on=False,
)
REQUEST = convert.attest_request_to_proto(
    nonce=b"n" * 32, enclave_public_key=b"\x02" + b"k" * 32, model_id="m", bundle=BUNDLE
).SerializeToString()


def test_bundle_round_trips_real_evidence() -> None:
    back = convert.bundle_from_proto(convert.bundle_to_proto(BUNDLE))
    assert back == BUNDLE
    tdx = EvidenceBundle(cpu=TdxEvidenceIn(b"q" * 100, b""), gpus=())
    assert convert.bundle_from_proto(convert.bundle_to_proto(tdx)) == tdx
    args = convert.attest_request_from_proto(
        convert.decode(broker_pb2.AttestRequest, REQUEST, limit=len(REQUEST))
    )
    assert (args.nonce, args.model_id, args.bundle) == (b"n" * 32, "m", BUNDLE)


def test_snp_crl_maps_both_ways_and_empty_is_none() -> None:
    """The AMD CRL rides in SnpEvidence.crl (field 3): present it round-trips byte for byte (up to
    MAX_CRL_BYTES), and proto3's empty default is read as "no CRL", never as an empty one."""
    from attest.bundle import load_bundle

    crl = b"\x30\x82" + b"L" * (MAX_CRL_BYTES - 2)
    assert isinstance(BUNDLE.cpu, SnpEvidenceIn)
    with_crl = dataclasses.replace(BUNDLE, cpu=dataclasses.replace(BUNDLE.cpu, crl=crl))
    msg = convert.bundle_to_proto(with_crl)
    assert msg.cpu.snp.crl == crl
    back = convert.bundle_from_proto(
        evidence_pb2.EvidenceBundle.FromString(msg.SerializeToString())
    )
    assert back == with_crl
    assert load_bundle(back.to_json()) == with_crl  # what the log archives is what was appraised
    plain = convert.bundle_to_proto(BUNDLE)
    assert plain.cpu.snp.crl == b""
    assert convert.bundle_from_proto(plain).cpu == SnpEvidenceIn(SNP_REPORT, SNP_CERTS, None)


def test_bundle_to_json_and_proto_agree() -> None:
    # The log archives bundle.to_json(); what the broker appraised must be what it archived.
    from attest.bundle import load_bundle

    assert (
        load_bundle(convert.bundle_from_proto(convert.bundle_to_proto(BUNDLE)).to_json()) == BUNDLE
    )


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.evidence.gpus[0].ClearField("report"), "report is required"),
        (lambda m: setattr(m.evidence.gpus[0], "arch", "hopper"), "arch"),
        (lambda m: setattr(m.evidence.gpus[0], "arch", "H" * 33), "arch"),
        (lambda m: m.evidence.cpu.snp.ClearField("report"), "snp.report"),
        (lambda m: m.evidence.cpu.ClearField("snp"), "one of snp, tdx"),
        (
            lambda m: setattr(m.evidence.cpu.snp, "crl", b"c" * (MAX_CRL_BYTES + 1)),
            r"snp\.crl must be 0\.\.262144 bytes",
        ),
        (lambda m: [m.evidence.gpus[0].rims.append(b"r") for _ in range(17)], "at most 16"),
        (lambda m: setattr(m, "model_id", ""), "model_id is required"),
        (lambda m: setattr(m, "model_id", "x" * 129), "model_id"),
        (lambda m: setattr(m, "model_id", "a\nb"), "printable"),
        (lambda m: setattr(m, "nonce", b"n" * 65), "nonce"),
        (lambda m: setattr(m, "enclave_public_key", b""), "enclave_public_key is required"),
    ],
)
def test_attest_request_rules(mutate: object, match: str) -> None:
    msg = broker_pb2.AttestRequest.FromString(REQUEST)
    mutate(msg)  # type: ignore[operator]
    with pytest.raises(convert.ConvertError, match=match):
        convert.attest_request_from_proto(msg)


def test_register_and_release_rules() -> None:
    ok = broker_pb2.RegisterModelRequest(
        model_id="m",
        model_version=3,
        data_key=b"k" * 32,
        policy_json="{}",
        manifest_digest=b"d" * 32,
    )
    assert convert.register_request_from_proto(ok).model_version == 3
    for field, value in (("data_key", b"k" * 31), ("manifest_digest", b""), ("policy_json", "")):
        bad = broker_pb2.RegisterModelRequest()
        bad.CopyFrom(ok)
        setattr(bad, field, value)
        with pytest.raises(convert.ConvertError):
            convert.register_request_from_proto(bad)
    with pytest.raises(convert.ConvertError):
        convert.release_request_from_proto(broker_pb2.ReleaseKeyRequest(result="é", model_id="m"))


def test_client_side_replies_are_checked() -> None:
    proof = evidence_pb2.LogProof(index=0, tree_size=1, hashes=[], checkpoint="cp\n")
    good = broker_pb2.AttestResponse(result="a.b.c", status="affirming", log_proof=proof)
    assert convert.attest_reply_from_proto(good).log_proof.tree_size == 1
    for bad in (
        broker_pb2.AttestResponse(result="a.b.c", status="great", log_proof=proof),
        broker_pb2.AttestResponse(result="a.b.c", status="affirming"),
        broker_pb2.AttestResponse(
            result="a.b.c",
            status="affirming",
            log_proof=evidence_pb2.LogProof(index=1, tree_size=1, checkpoint="c\n"),
        ),
        broker_pb2.AttestResponse(
            result="a.b.c",
            status="affirming",
            log_proof=evidence_pb2.LogProof(index=0, tree_size=1, hashes=[b"x"], checkpoint="c\n"),
        ),
    ):
        with pytest.raises(convert.ConvertError):
            convert.attest_reply_from_proto(bad)
    with pytest.raises(convert.ConvertError):
        convert.challenge_reply_from_proto(
            broker_pb2.ChallengeResponse(nonce=b"n" * 32, expires_at_unix=1, protocol_label="")
        )
    # Past what a datetime holds: a ConvertError, once an untyped ValueError/OSError.
    for when in (300_000_000_000, 2**62, -1):
        with pytest.raises(convert.ConvertError, match="expires_at_unix"):
            convert.challenge_reply_from_proto(
                broker_pb2.ChallengeResponse(
                    nonce=b"n" * 32, expires_at_unix=when, protocol_label="lessee/v2/key-release"
                )
            )


def test_error_table_maps_each_family() -> None:
    cases = [
        (UnknownModelError("x"), grpc.StatusCode.NOT_FOUND),
        (ParseError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (InputError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NonceError("x", reason="nonce_used"), grpc.StatusCode.FAILED_PRECONDITION),
        (ReleaseRefusedError("x", reason="not_affirming"), grpc.StatusCode.PERMISSION_DENIED),
        (EarError("x", reason="ear_expired"), grpc.StatusCode.PERMISSION_DENIED),
    ]
    for exc, code in cases:
        assert status_for(exc)[0] is code
    assert status_for(NonceError("x", reason="nonce_used"))[2] == "nonce_used"
    secret = RuntimeError("master key 0123456789abcdef")
    assert status_for(secret) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, None)
    # Subclasses precede their bases in the table (first match wins).
    for i, (cls, _) in enumerate(ERROR_STATUS):
        for later, _ in ERROR_STATUS[i + 1 :]:
            assert not issubclass(later, cls), (later, cls)


def test_peer_strings() -> None:
    assert peer_is_loopback("ipv4:127.0.0.1:5000")
    assert peer_is_loopback("ipv4:127.8.9.1:1")
    assert peer_is_loopback("ipv6:[::1]:5000")
    # As gRPC writes them: brackets percent-encoded; and an IPv4 client of a dual-stack port.
    assert peer_is_loopback("ipv6:%5B::1%5D:5000")
    assert peer_is_loopback("ipv6:%5B::ffff:127.0.0.1%5D:5000")
    assert not peer_is_loopback("ipv6:%5B::ffff:10.0.0.1%5D:5000")
    assert not peer_is_loopback("ipv6:%5B::2%5D:5000")
    assert not peer_is_loopback("ipv6:::1:5000")  # no brackets: not gRPC's form
    assert not peer_is_loopback("ipv6:%5Bfe80::1%25eth0%5D:5000")
    assert not peer_is_loopback("ipv4:10.0.0.1:5000")
    assert not peer_is_loopback("ipv6:[::ffff:10.0.0.1]:5000")
    assert not peer_is_loopback("unix:/tmp/sock")
    assert not peer_is_loopback("ipv4:localhost:1")


# ---- hostile bytes: only typed errors ----------------------------------------------------------


def _parse(data: bytes) -> None:
    try:
        msg = convert.decode(broker_pb2.AttestRequest, data, limit=16 * 1024 * 1024)
        convert.attest_request_from_proto(msg)
    except InputError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=len(REQUEST) - 1), st.integers(min_value=1, max_value=255)
)
def test_single_byte_flips_raise_only_typed_errors(pos: int, flip: int) -> None:
    data = bytearray(REQUEST)
    data[pos] ^= flip
    _parse(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(REQUEST) - 1))
def test_truncations_raise_only_typed_errors(cut: int) -> None:
    _parse(REQUEST[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    _parse(data)
    try:
        convert.release_request_from_proto(
            convert.decode(broker_pb2.ReleaseKeyRequest, data, limit=1024)
        )
    except InputError:
        pass
    try:
        convert.register_request_from_proto(
            convert.decode(broker_pb2.RegisterModelRequest, data, limit=1024)
        )
    except InputError:
        pass


def test_decode_refuses_oversize_before_parsing() -> None:
    with pytest.raises(convert.ConvertError, match="larger than"):
        convert.decode(broker_pb2.AttestRequest, REQUEST, limit=len(REQUEST) - 1)
