"""``lessee agent --amd-crl`` / ``--tdx-collateral``: each file is read bounded (the collateral
also checked structurally) and handed to the real configfs-tsm source; misuse is exit 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

import agent.evidence.sources as sources
from agent.cli import agent as agent_cli
from agent.cli.main import main
from attest.errors import InputError
from attest.snp.verify import MAX_CRL_BYTES
from tests.tdx.helpers import DCAP

COLLATERAL = DCAP / "tdx_quote_collateral.json"


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cli.register(parser)
    return parser.parse_args(["--broker", "b:1", "--model-id", "m", "--sealed", "s", *extra])


class _Recorder:
    """Stands in for TsmCpuSource / NvmlGpuSource (no hardware here) and records what the CLI
    hands the CPU source."""

    crl: bytes | None = None
    tdx_collateral: bytes | None = None

    def __init__(
        self, *_: Any, crl: bytes | None = None, tdx_collateral: bytes | None = None
    ) -> None:
        type(self).crl = crl
        type(self).tdx_collateral = tdx_collateral


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> type[_Recorder]:
    _Recorder.crl = _Recorder.tdx_collateral = None
    monkeypatch.setattr(sources, "TsmCpuSource", _Recorder)
    monkeypatch.setattr(sources, "NvmlGpuSource", object)
    return _Recorder


def test_amd_crl_file_goes_to_the_snp_source(tmp_path: Path, recorded: type[_Recorder]) -> None:
    crl = tmp_path / "milan.crl"
    crl.write_bytes(b"\x30\x82" + b"c" * (MAX_CRL_BYTES - 2))  # the largest accepted
    cpu, _ = agent_cli._sources(_args("--amd-crl", str(crl)))
    assert isinstance(cpu, _Recorder)
    assert recorded.crl == crl.read_bytes()


def test_without_amd_crl_the_source_gets_none(recorded: type[_Recorder]) -> None:
    agent_cli._sources(_args())
    assert recorded.crl is None
    assert recorded.tdx_collateral is None


def test_tdx_collateral_file_goes_to_the_source_unchanged(recorded: type[_Recorder]) -> None:
    agent_cli._sources(_args("--tdx-collateral", str(COLLATERAL)))
    assert recorded.tdx_collateral == COLLATERAL.read_bytes()
    assert recorded.crl is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b" " * (sources.MAX_TDX_COLLATERAL_BYTES + 1), "larger than"),
        (b"{}", "QuoteCollateralV3"),  # JSON, but not collateral
        (b"\x30\x82\x01\x00", "QuoteCollateralV3"),  # a DER CRL given for the whole set
    ],
)
def test_bad_tdx_collateral_file_is_bad_input(
    tmp_path: Path, recorded: type[_Recorder], content: bytes, match: str
) -> None:
    path = tmp_path / "collateral.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        agent_cli._sources(_args("--tdx-collateral", str(path)))
    assert str(path) in str(info.value)
    assert recorded.tdx_collateral is None  # refused before any source was made


def test_truncated_tdx_collateral_is_bad_input(tmp_path: Path, recorded: type[_Recorder]) -> None:
    """One key of the real set missing: still JSON, no longer what the broker verifies."""

    doc = json.loads(COLLATERAL.read_bytes())
    del doc["qe_identity_signature"]
    path = tmp_path / "collateral.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="qe_identity_signature"):
        agent_cli._sources(_args("--tdx-collateral", str(path)))


def test_tdx_collateral_with_emulation_is_refused() -> None:
    with pytest.raises(InputError, match="--emulate is SEV-SNP"):
        agent_cli._sources(_args("--emulate", "--tdx-collateral", str(COLLATERAL)))


def test_help_states_the_real_collateral_bound() -> None:
    assert agent_cli.MAX_TDX_COLLATERAL_KIB * 1024 == sources.MAX_TDX_COLLATERAL_BYTES


@pytest.mark.parametrize(
    ("content", "match"), [(b"c" * (MAX_CRL_BYTES + 1), "larger than"), (b"", "empty")]
)
def test_oversize_or_empty_crl_file_is_bad_input(
    tmp_path: Path, recorded: type[_Recorder], content: bytes, match: str
) -> None:
    crl = tmp_path / "bad.crl"
    crl.write_bytes(content)
    with pytest.raises(InputError, match=match):
        agent_cli._sources(_args("--amd-crl", str(crl)))


def test_amd_crl_with_emulation_is_refused(tmp_path: Path) -> None:
    crl = tmp_path / "milan.crl"
    crl.write_bytes(b"x")
    with pytest.raises(InputError, match="--emulate makes its own"):
        agent_cli._sources(_args("--emulate", "--amd-crl", str(crl)))


def test_cli_exit_code_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sealed").mkdir()
    big = tmp_path / "big.crl"
    big.write_bytes(b"c" * (MAX_CRL_BYTES + 1))
    argv = ["agent", "--broker", "127.0.0.1:1", "--model-id", "m", "--sealed"]
    assert main([*argv, str(tmp_path / "sealed"), "--amd-crl", str(big)]) == 2
    assert "AMD CRL larger than" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "sealed"), "--amd-crl", str(tmp_path / "absent")]) == 2
    assert main(["agent", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "https://kdsintf.amd.com/vcek/v1/<product>/crl" in text
    assert "refuses the CPU" in text
    assert "--tdx-collateral FILE" in text
    assert "Intel PCS or the platform's PCCS" in text


def test_cli_tdx_collateral_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sealed").mkdir()
    argv = ["agent", "--broker", "127.0.0.1:1", "--model-id", "m", "--sealed"]
    argv += [str(tmp_path / "sealed")]
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(b'{"tcbInfo": {}}')
    assert main([*argv, "--tdx-collateral", str(wrong)]) == 2
    assert "QuoteCollateralV3" in capsys.readouterr().err
    assert main([*argv, "--tdx-collateral", str(tmp_path / "absent")]) == 2
    # one guest is one TEE: both supplements together are a usage error (argparse, exit 2)
    crl = tmp_path / "milan.crl"
    crl.write_bytes(b"x")
    assert main([*argv, "--tdx-collateral", str(COLLATERAL), "--amd-crl", str(crl)]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--generator", "no-colon"], "MODULE:FACTORY"),
        (["--generator", "lessee_no_such_module_xyz:make"], "cannot import"),
        (["--generator", "json:no_such_factory"], "cannot import"),
        (
            [
                "--generator",
                "echo",
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            "c.pem",
        ),
    ],
)
def test_serve_inputs_are_checked_before_the_broker_is_asked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    match: str,
) -> None:
    """Review: a release is one-shot (the result is spent and logged), so a ``--serve`` input
    that cannot work (an engine that cannot be imported, a TLS file that cannot be read) must
    be exit 2 before the agent attests, not after the data key was released."""
    import agent.agent as agent_mod

    def no_broker(*_: object, **__: object) -> None:
        raise AssertionError("the broker was contacted before the --serve inputs were checked")

    monkeypatch.setattr(agent_cli, "_sources", lambda _args: (object(), object()))
    monkeypatch.setattr(agent_mod, "open_channel", no_broker)
    (tmp_path / "sealed").mkdir()
    argv = ["agent", "--broker", "127.0.0.1:1", "--model-id", "m", "--sealed"]
    argv += [str(tmp_path / "sealed"), "--serve", "127.0.0.1:0", *extra]
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def _tls_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed P-256 certificate and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def busy_port() -> Any:
    """A port something on loopback listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    "case",
    [
        "not-host-port",
        "port-in-use",
        "not-this-machine",
        "cert-not-pem",
        "key-not-pem",
        "key-of-another-cert",
    ],
)
def test_serve_address_and_tls_pair_are_checked_before_the_broker_is_asked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    busy_port: int,
    case: str,
) -> None:
    """Review: a bad ``--serve`` address, a port in use or a TLS file that is not a matching
    PEM pair failed only when the service started, after the one-shot key release was spent.
    Each is now exit 2, one line naming the address or the file, before the broker is asked."""
    import agent.agent as agent_mod

    def no_broker(*_: object, **__: object) -> None:
        raise AssertionError("the broker was contacted before the --serve inputs were checked")

    monkeypatch.setattr(agent_cli, "_sources", lambda _args: (object(), object()))
    monkeypatch.setattr(agent_mod, "open_channel", no_broker)
    (tmp_path / "sealed").mkdir()
    cert, key = _tls_pair(tmp_path, "enclave")
    _, other_key = _tls_pair(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    serve, tls, match = {
        "not-host-port": ("nohost", (), "--serve address 'nohost' is not host:port"),
        "port-in-use": (f"127.0.0.1:{busy_port}", (), "the port is in use"),
        # TEST-NET-3 (RFC 5737): documentation only, never an address of this machine
        "not-this-machine": ("203.0.113.7:0", (), "not an address of this machine"),
        "cert-not-pem": ("127.0.0.1:0", (junk, key), f"{junk}: not a PEM certificate chain"),
        "key-not-pem": ("127.0.0.1:0", (cert, junk), f"{junk}: not an unencrypted PEM"),
        "key-of-another-cert": (
            "127.0.0.1:0",
            (cert, other_key),
            f"{other_key}: not the private key of the first certificate in {cert}",
        ),
    }[case]
    argv = ["agent", "--broker", "127.0.0.1:1", "--model-id", "m", "--sealed"]
    argv += [str(tmp_path / "sealed"), "--serve", serve, "--generator", "echo"]
    if tls:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lessee: error: ") and err.count("\n") == 1, err
    assert match in err


def test_a_matching_tls_pair_and_a_free_port_pass_the_checks(tmp_path: Path) -> None:
    cert, key = _tls_pair(tmp_path, "enclave")
    agent_cli.check_tls_pair(str(cert), cert.read_bytes(), str(key), key.read_bytes())
    agent_cli.check_serve_address("127.0.0.1:0")
    agent_cli.check_serve_address("localhost:0")
