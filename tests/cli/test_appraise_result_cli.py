"""``lessee appraise`` and ``lessee result verify`` on real evidence, end to end in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.cli.main import main
from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn
from attest.snp.report import parse_report
from tests.conftest import CPU, NVIDIA

SNP = bytes.fromhex((CPU / "snp/go-sev-guest/attestation.bin").read_bytes().hex())


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    report = parse_report(SNP)
    bundle = EvidenceBundle(
        cpu=SnpEvidenceIn(
            SNP,
            (
                (CPU / "snp/go-sev-guest/vcek.testcer").read_bytes(),
                (CPU / "snp/go-sev-guest/ask_ark_milan.pem").read_bytes(),
            ),
        ),
        gpus=(
            DeviceEvidenceIn(
                "HOPPER",
                bytes.fromhex((NVIDIA / "hopper_legacy/attestationReport.txt").read_text().strip()),
                (NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes(),
            ),
        ),
        cc_mode_on=True,
        devtools_on=False,
    )
    (tmp_path / "bundle.json").write_bytes(bundle.to_json())
    (tmp_path / "policy.json").write_text(
        json.dumps(
            {
                "name": "t",
                "cpu_tees": ["snp"],
                "snp": {"allowed_measurements": [report.measurement.hex()]},
            }
        )
    )
    (tmp_path / "enclave.key").write_bytes(b"\x02" + b"\x07" * 32)
    return {
        k: str(tmp_path / v)
        for k, v in {
            "key": "k.pem",
            "pub": "pub.pem",
            "bundle": "bundle.json",
            "policy": "policy.json",
            "ek": "enclave.key",
            "dir": ".",
        }.items()
    }


def test_appraise_prints_a_verifiable_contraindicated_ear(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "appraise",
            "--policy",
            files["policy"],
            "--evidence-bundle",
            files["bundle"],
            "--key",
            files["key"],
            "--nonce",
            "00" * 32,
            "--enclave-key",
            files["ek"],
            "--rim",
            str(NVIDIA / "rims/test_no_gpu"),
            "--at",
            "2024-06-01T00:00:00Z",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1  # wrong session binding and a DEBUG guest: never affirming
    assert "snp.policy.debug" in err and "snp.report_data" in err
    token = out.strip()
    Path(files["dir"], "t.jwt").write_text(token)
    rc = main(
        [
            "result",
            "verify",
            str(Path(files["dir"], "t.jwt")),
            "--verifier-key",
            files["pub"],
            "--at",
            "2024-06-01T00:01:00Z",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1 and "contraindicated" in err
    claims = json.loads(out)
    assert claims["submods"]["cpu0"]["ear.status"] == "contraindicated"
    assert claims["eat_nonce"] == "A" * 43  # base64url of 32 zero bytes


def test_result_verify_refuses_other_key_and_bad_input(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "appraise",
            "--policy",
            files["policy"],
            "--evidence-bundle",
            files["bundle"],
            "--key",
            files["key"],
            "--nonce",
            "00" * 32,
            "--enclave-key",
            files["ek"],
            "--at",
            "2024-06-01T00:00:00Z",
        ]
    )
    token = capsys.readouterr().out.strip()
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    Path(files["dir"], "other.pem").write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert (
        main(
            [
                "result",
                "verify",
                token,
                "--verifier-key",
                str(Path(files["dir"], "other.pem")),
                "--at",
                "2024-06-01T00:01:00Z",
            ]
        )
        == 1
    )
    assert "signature" in capsys.readouterr().err
    assert main(["result", "verify", "not-a-token", "--verifier-key", files["pub"]]) == 2
    assert (
        main(
            [
                "appraise",
                "--policy",
                files["bundle"],
                "--evidence-bundle",
                files["bundle"],
                "--key",
                files["key"],
                "--nonce",
                "00",
                "--enclave-key",
                files["ek"],
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    "content",
    [
        b'{"kty": "OKP", "crv": "Ed25519", "x": "' + b"A" * 10 + b'"',  # not JSON
        b'{"kty": "EC", "kty": "OKP"}',  # duplicate member
        b"{" + b'"a": [' * 100 + b"1" + b"]" * 100 + b"}",  # nested past the reader's bound
        b'{"kty": "OKP", "crv": "Ed25519", "x": 5}',  # x not a string
        b'{"kty": "OKP", "crv": "Ed25519", "x": "' + b"1" * 5000 + b'"}'[:-2] + b'"}',
        b'{"kty": "EC", "crv": "P-256", "x": ' + b"9" * 5000 + b"}",  # past Python's int limit
    ],
    ids=["truncated", "duplicate", "deep", "x-not-text", "x-wrong-length", "huge-int"],
)
def test_a_bad_jwk_verifier_key_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    key = tmp_path / "key.jwk"
    key.write_bytes(content)
    assert main(["result", "verify", "a.b.c", "--verifier-key", str(key)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lessee: error:") and err.count("\n") == 1 and "key.jwk" in err


def test_appraise_uses_binding_version_2_unless_told_version_1(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Current agents make version-2 evidence, so that is the default; the result then names
    the device state its binding bound (``ear.lessee.binding``), and ``--binding-v1`` appraises
    an older agent's evidence under version 1 (no claim)."""
    import base64

    from attest.binding import BINDING_CLAIM, PROTOCOL_LABEL_V2
    from attest.bundle import load_bundle

    args = ["appraise", "--policy", files["policy"], "--evidence-bundle", files["bundle"]]
    args += ["--key", files["key"], "--nonce", "00" * 32, "--enclave-key", files["ek"]]
    args += ["--at", "2024-06-01T00:00:00Z"]

    def claims(extra: list[str]) -> dict[str, object]:
        main([*args, *extra])
        token = capsys.readouterr().out.strip()
        payload = token.split(".")[1]
        decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
        return decoded

    state = load_bundle(Path(files["bundle"]).read_bytes()).device_state
    assert claims([])[BINDING_CLAIM] == {
        "label": PROTOCOL_LABEL_V2,
        "cc_mode_on": state.cc_mode_on,
        "devtools_on": state.devtools_on,
        "gpus": state.gpus,
        "switches": state.switches,
    }
    assert BINDING_CLAIM not in claims(["--binding-v1"])


def _unknown_curve(der: bytes) -> bytes:
    """``der`` with the P-256 curve OID turned into one cryptography does not know."""
    p256 = bytes.fromhex("2a8648ce3d030107")
    assert p256 in der
    return der.replace(p256, bytes.fromhex("2a8648ce3d030163"))


def test_keys_on_an_unknown_curve_and_hostile_jwks_are_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cryptography answers a well-formed key on a curve it does not know with
    UnsupportedAlgorithm (no ValueError): the CLI's key loaders and the broker's EAR key
    loader said "internal error"; the client's broker-key JWK reader used json.loads
    (RecursionError, ValueError past the digit limit)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent.broker.config import _load_or_create_ear_key
    from agent.cli._keys import load_signing_key, load_verifying_key
    from agent.cli.client import load_broker_key
    from attest.errors import InputError

    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    def pem(label: str, der: bytes) -> Path:
        path = tmp_path / f"{label.replace(' ', '_')}.pem"
        body = base64.encodebytes(der).decode()
        path.write_text(f"-----BEGIN {label}-----\n{body}-----END {label}-----\n")
        path.chmod(0o600)
        return path

    public, private = (
        pem("PUBLIC KEY", _unknown_curve(spki)),
        pem("PRIVATE KEY", _unknown_curve(pkcs8)),
    )
    for load, path in (
        (load_verifying_key, public),
        (load_broker_key, public),
        (load_signing_key, private),
    ):
        with pytest.raises(InputError):
            load(str(path))  # type: ignore[operator]
    with pytest.raises(InputError):
        _load_or_create_ear_key(private)
    for body in (b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", b'{"x": ' + b"9" * 5000 + b"}"):
        jwk = tmp_path / "broker.jwk"
        jwk.write_bytes(body)
        with pytest.raises(InputError):
            load_broker_key(str(jwk))
    assert main(["result", "verify", "a.b.c", "--verifier-key", str(public)]) == 2
    assert "internal error" not in capsys.readouterr().err
