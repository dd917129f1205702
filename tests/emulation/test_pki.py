"""The emulation PKI: generated once, reloaded fast, safe on disk, unmistakably named."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from agent.emulation import EmulationPki, EmulationPkiError, SnpTcb
from agent.emulation.pki import (
    EMULATION_LABEL,
    EMULATION_NOTICE,
    MAX_EMULATED_GPUS,
    emulated_fwid,
)
from attest.errors import InputError
from attest.nvidia.device import leaf_fwid
from attest.nvidia.rim_parse import parse_rim
from attest.policy import Roots
from attest.roots import nvidia_device_root, nvidia_rim_root
from attest.snp.verify import ARK_SHA256, load_amd_certificates
from attest.x509chain import load_pem_chain
from tests.conftest import CPU, NVIDIA


def _all_certs(pki: EmulationPki) -> list[x509.Certificate]:
    certs = [pki.gpu_root.cert, pki.gpu_identity.cert, pki.gpu_provisioner.cert]
    for g in pki.gpus:
        certs += [g.brom.cert, g.leaf.cert]
    certs += [pki.rim_root.cert, pki.rim_ca.cert, pki.rim_l3.cert]
    certs += [pki.rim_driver_signer.cert, pki.rim_vbios_signer.cert]
    certs += [pki.ark.cert, pki.ask.cert, pki.vcek(SnpTcb()).cert]
    return certs


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _vendor_names() -> set[str]:
    """Common names of every real vendor certificate in the vectors and pinned roots."""
    names: set[str] = set()
    chains = [
        NVIDIA / "hopper" / "hopperCertChain.txt",
        NVIDIA / "hopper_legacy" / "gpuAkCertChain.txt",
        NVIDIA / "blackwell" / "blackwell_coco_certs.txt",
    ]
    for path in chains:
        for cert in load_pem_chain(path.read_bytes()):
            names.update({_cn(cert.subject), _cn(cert.issuer)})
    names.update({_cn(nvidia_device_root().subject), _cn(nvidia_rim_root().subject)})
    names.update({"NVIDIA Reference Value L3 GH100 001", "NVIDIA Reference Value GH100 CA"})
    for pem in (CPU / "snp" / "go-sev-guest").glob("ask_ark_*.pem"):
        for cert in load_amd_certificates(pem.read_bytes()):
            names.add(_cn(cert.subject))
    return names


def test_generated_once_and_reloaded_fast(
    pki_created: tuple[EmulationPki, float], pki_dir: Path
) -> None:
    pki, create_seconds = pki_created
    start = time.perf_counter()
    again = EmulationPki.load_or_create(pki_dir)
    load_seconds = time.perf_counter() - start
    assert again.root_fingerprints() == pki.root_fingerprints()
    assert again.gpus[3].leaf.cert == pki.gpus[3].leaf.cert
    assert again.chip_id == pki.chip_id
    # measured here: create ~1-3 s (two RSA-4096 keys), load ~10-20 ms
    assert load_seconds < 0.5
    assert load_seconds * 5 < create_seconds


def test_private_files_are_0600_and_directories_0700(pki_dir: Path) -> None:
    secrets = [p for p in pki_dir.rglob("*") if p.suffix in (".key", ".secret")]
    assert len(secrets) == 3 + 2 * MAX_EMULATED_GPUS + 5 + 2 + 1
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [pki_dir, *(p for p in pki_dir.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_fingerprints_name_the_roots(pki: EmulationPki) -> None:
    fps = pki.root_fingerprints()
    assert fps["gpu_device_root"] == hashlib.sha256(pki.gpu_root.der).hexdigest()
    assert fps["rim_root"] == hashlib.sha256(pki.rim_root.der).hexdigest()
    assert fps["snp_ark"] == hashlib.sha256(pki.ark.der).hexdigest()
    # they are valid policy entries, and no default policy trusts them
    assert Roots(extra_trusted_sha256=tuple(fps.values())).extra_trusted_sha256
    assert not set(fps.values()) & set(Roots().extra_trusted_sha256)
    assert not set(fps.values()) & set(ARK_SHA256.values())
    manifest = json.loads((pki.directory / "manifest.json").read_text())
    assert manifest["roots_sha256"] == fps


def test_nothing_is_named_like_a_vendor_ca(pki: EmulationPki) -> None:
    vendor = _vendor_names()
    assert "NVIDIA Device Identity CA" in vendor and "ARK-Milan" in vendor
    for cert in _all_certs(pki):
        for name in (cert.subject, cert.issuer):
            assert (
                name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == EMULATION_LABEL
            )
            ou = name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
            assert ou == EMULATION_NOTICE
            assert "NVIDIA" not in name.rfc4514_string()
            assert "Advanced Micro Devices" not in name.rfc4514_string()
            assert _cn(name) not in vendor or _cn(name) in ("GH100 A01 GSP FMC LF", "SEV-VCEK")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca:
            assert _cn(cert.subject).startswith(EMULATION_LABEL + " ")
        else:
            # device-key leaves keep the vendors' fixed names: the verifiers read the kind there
            assert _cn(cert.subject) in (
                "GH100 A01 GSP FMC LF",
                "SEV-VCEK",
                "LESSEE EMULATION HCC RIM L4 Signer",
            )


def test_device_chain_has_the_hopper_shape(pki: EmulationPki) -> None:
    real = load_pem_chain((NVIDIA / "hopper" / "hopperCertChain.txt").read_bytes())
    for index in (0, MAX_EMULATED_GPUS - 1):
        chain = pki.device_chain(index)
        assert len(chain) == len(real) == 5
        for ours, theirs in zip(chain, real, strict=True):
            assert isinstance(ours.public_key(), ec.EllipticCurvePublicKey)
            assert ours.signature_hash_algorithm is not None
            assert ours.signature_hash_algorithm.name == theirs.signature_hash_algorithm.name  # type: ignore[union-attr]
            ours_crit = {e.oid for e in ours.extensions if e.critical}
            theirs_crit = {e.oid for e in theirs.extensions if e.critical}
            assert ours_crit == theirs_crit
        assert chain[0].not_valid_after_utc == real[0].not_valid_after_utc  # 9999-12-31
        assert chain[-1].subject == chain[-1].issuer
    assert pki.device_chain(0)[0] != pki.device_chain(1)[0]
    assert pki.device_chain(0)[2:] == pki.device_chain(1)[2:]


def _rim_shape(cert: x509.Certificate) -> tuple[object, ...]:
    """What must match NVIDIA's RIM certificates: key curve, hash, CA flag, pathLen, key usage
    and which extensions are critical."""
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return (
        key.curve.name,
        cert.signature_hash_algorithm.name if cert.signature_hash_algorithm else None,
        bc.ca,
        bc.path_length,
        (ku.digital_signature, ku.key_cert_sign, ku.crl_sign),
        sorted(e.oid.dotted_string for e in cert.extensions if e.critical),
    )


def test_rim_pki_has_nvidias_shape(pki: EmulationPki) -> None:
    """Each RIM embeds signer, L3, CA, root as NVIDIA's do, link for link the same kind of
    certificate (pathLen none on the CA, 0 on the L3), and the driver and VBIOS RIMs have their
    own leaf signers (own key and serial, same name) under one L3, as NVIDIA's two RIMs do."""
    real = {
        kind: parse_rim((NVIDIA / "rims" / "test_no_gpu" / name).read_bytes())
        for kind, name in (
            ("driver", "Driver_RIM_test_no_gpu.swidtag"),
            ("vbios", "1010_0200_882_96005E0001_test_no_gpu.swidtag"),
        )
    }
    for kind, theirs in real.items():
        ours = pki.rim_chain(kind)
        assert len(ours) == len(theirs.embedded_certificates) == 4
        assert ours[0] == pki.rim_signer(kind).cert
        assert [_rim_shape(c) for c in ours] == [
            _rim_shape(c) for c in theirs.embedded_certificates
        ]
        for child, parent in itertools.pairwise(ours):
            assert child.issuer == parent.subject
            child.verify_directly_issued_by(parent)
    driver, vbios = pki.rim_chain("driver"), pki.rim_chain("vbios")
    assert driver[1:] == vbios[1:]
    assert driver[0].subject == vbios[0].subject
    assert driver[0].serial_number != vbios[0].serial_number
    assert driver[0].public_key() != vbios[0].public_key()
    with pytest.raises(InputError):
        pki.rim_chain("firmware")


def test_leaf_fwid_extension_is_byte_shaped_like_nvidias(pki: EmulationPki) -> None:
    oid = x509.ObjectIdentifier("2.23.133.5.4.1")
    real_leaf = load_pem_chain((NVIDIA / "hopper" / "hopperCertChain.txt").read_bytes())[0]
    real = real_leaf.extensions.get_extension_for_oid(oid)
    ours = pki.gpus[0].leaf.cert.extensions.get_extension_for_oid(oid)
    assert ours.critical == real.critical
    a, b = real.value.value, ours.value.value  # type: ignore[attr-defined]
    assert len(a) == len(b) == 189
    # identical except the P-384 point of the BROM key (bytes 30..125) and the FWID (last 48)
    assert a[:30] == b[:30]
    assert a[126:-48] == b[126:-48]
    brom_spki = (
        pki.gpus[0]
        .brom.cert.public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    assert b[6:126] == brom_spki
    assert b[-48:] == emulated_fwid()
    assert leaf_fwid(pki.gpus[0].leaf.cert) == emulated_fwid()  # the verifier's own reading


def test_vcek_is_shaped_like_amds(pki: EmulationPki) -> None:
    real = load_amd_certificates((CPU / "snp" / "virtee-sev" / "vcek_milan.der").read_bytes())[0]
    ours = pki.vcek(SnpTcb())
    with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
        assert ours.cert.serial_number == 0  # as AMD's (RFC 5280 forbids it; AMD does it)
    assert [e.oid for e in ours.cert.extensions] == [e.oid for e in real.extensions]
    for mine, theirs in zip(ours.cert.extensions, real.extensions, strict=True):
        assert isinstance(mine.value, x509.UnrecognizedExtension)
        assert isinstance(theirs.value, x509.UnrecognizedExtension)
        assert len(mine.value.value) == len(theirs.value.value)
        if mine.oid.dotted_string != "1.3.6.1.4.1.3704.1.4":  # hwID is raw bytes, no DER
            assert mine.value.value[:1] == theirs.value.value[:1]  # same DER type
    assert ours.cert.signature_algorithm_oid == real.signature_algorithm_oid
    assert isinstance(pki.ark.key, rsa.RSAPrivateKey) and pki.ark.key.key_size == 4096
    # the same TCB gives the same key; another TCB another key
    assert pki.vcek(SnpTcb()) is ours
    other = pki.vcek(SnpTcb(bootloader=4))
    assert other.cert.public_key() != ours.cert.public_key()


def _copy(pki: EmulationPki, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(pki.directory, target)
    return target


def test_world_readable_key_is_refused(pki: EmulationPki, tmp_path: Path) -> None:
    path = _copy(pki, tmp_path)
    (path / "rim" / "vbios.key").chmod(0o644)
    with pytest.raises(EmulationPkiError, match="0600"):
        EmulationPki.load(path)


@pytest.mark.parametrize("name", ["gpu/identity.pem", "gpu/2/leaf.key", "snp/ark.pem"])
def test_trailing_bytes_are_refused(pki: EmulationPki, tmp_path: Path, name: str) -> None:
    path = _copy(pki, tmp_path)
    with (path / name).open("ab") as f:
        f.write(b"\n")
    with pytest.raises(EmulationPkiError, match="besides"):
        EmulationPki.load(path)


def test_swapped_key_is_refused(pki: EmulationPki, tmp_path: Path) -> None:
    path = _copy(pki, tmp_path)
    shutil.copyfile(path / "gpu" / "1" / "leaf.key", path / "gpu" / "0" / "leaf.key")
    with pytest.raises(EmulationPkiError, match="does not belong"):
        EmulationPki.load(path)


def test_replaced_root_is_refused(pki: EmulationPki, tmp_path: Path) -> None:
    path = _copy(pki, tmp_path)
    for ext in ("pem", "key"):
        shutil.copyfile(path / "rim" / f"ca.{ext}", path / "rim" / f"root.{ext}")
    with pytest.raises(EmulationPkiError, match="recorded at creation"):
        EmulationPki.load(path)


def test_other_format_and_missing_files_are_refused(pki: EmulationPki, tmp_path: Path) -> None:
    path = _copy(pki, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "version": 3}))
    with pytest.raises(EmulationPkiError, match="format"):
        EmulationPki.load(path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "snp" / "ask.pem").unlink()
    with pytest.raises(EmulationPkiError, match="missing"):
        EmulationPki.load(path)
    with pytest.raises(EmulationPkiError, match="missing"):
        EmulationPki.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "content",
    [b"[" * 60_000, b'{"a": ' * 60_000, b"", b"\xff\xfe\x00", b'{"format": 1, "format": 2}'],
    ids=["nested-array", "nested-object", "empty", "not-utf8", "duplicate-key"],
)
def test_a_manifest_that_is_not_json_is_refused(
    pki: EmulationPki, tmp_path: Path, content: bytes
) -> None:
    """Deep nesting once escaped ``json.loads`` as a RecursionError."""
    path = _copy(pki, tmp_path)
    (path / "manifest.json").write_bytes(content)
    for load in (EmulationPki.load, EmulationPki.load_or_create):
        with pytest.raises(EmulationPkiError, match=r"manifest\.json is not JSON"):
            load(path)


def test_version_1_directory_is_refused_with_how_to_recreate(
    pki: EmulationPki, tmp_path: Path
) -> None:
    """A PKI made before the RIM PKI had NVIDIA's shape (rim/{root,ca,signer}) is refused, not
    half-loaded, with what to do; load_or_create neither loads nor overwrites it."""
    path = _copy(pki, tmp_path)
    for stem in ("l3", "driver", "vbios"):
        for ext in ("pem", "key"):
            (path / "rim" / f"{stem}.{ext}").unlink()
    for ext in ("pem", "key"):
        shutil.copyfile(path / "rim" / f"ca.{ext}", path / "rim" / f"signer.{ext}")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    for load in (EmulationPki.load, EmulationPki.load_or_create):
        with pytest.raises(EmulationPkiError, match=r"version-1 .*Remove the directory") as err:
            load(path)
        assert "PRIVATE" not in str(err.value)
    assert (path / "rim" / "signer.key").exists()  # nothing was touched


def test_create_refuses_a_foreign_directory(pki: EmulationPki, tmp_path: Path) -> None:
    with pytest.raises(EmulationPkiError, match="not empty"):
        EmulationPki.create(pki.directory)  # an existing PKI is never overwritten
    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("not a PKI")
    with pytest.raises(EmulationPkiError, match="not empty"):
        EmulationPki.create(target)
    assert (target / "something").read_text() == "not a PKI"
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # nothing else was made


def test_concurrent_creators_agree(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    results: list[EmulationPki] = []
    errors: list[BaseException] = []

    def make() -> None:
        try:
            results.append(EmulationPki.load_or_create(target))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 2
    assert results[0].root_fingerprints() == results[1].root_fingerprints()
    assert results[0].root_fingerprints() == EmulationPki.load(target).root_fingerprints()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


def test_gpu_index_is_bounded(pki: EmulationPki) -> None:
    with pytest.raises(InputError):
        pki.gpu(MAX_EMULATED_GPUS)
    with pytest.raises(InputError):
        pki.gpu(-1)


def test_no_private_key_in_repr(pki: EmulationPki) -> None:
    text = repr(pki) + repr(pki.gpus[0]) + repr(pki.rim_driver_signer) + repr(pki.rim_l3)
    assert "PRIVATE" not in text
    assert "key=" not in text
    assert pki.root_fingerprints()["gpu_device_root"] in repr(pki)


def test_default_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from agent.emulation import default_pki_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_pki_dir() == tmp_path / "lessee" / "emulation"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_pki_dir() == Path.home() / ".local" / "share" / "lessee" / "emulation"


def test_a_pki_of_another_user_or_in_a_directory_others_can_write_is_refused(
    tmp_path: Path,
) -> None:
    """The loader checked only the private keys' mode bits: a PKI another user made in a shared
    directory (its keys then theirs) was loaded, by ``lessee agent --emulate`` and, for its
    roots, by ``broker serve --trust-emulation``."""
    import os

    from agent.rpc.server import load_emulation_roots

    d = tmp_path / "pki"
    EmulationPki.create(d)
    EmulationPki.load(d)
    load_emulation_roots(d)
    (d / "gpu").chmod(0o777)
    with pytest.raises(EmulationPkiError, match="writable by group/others"):
        EmulationPki.load(d)
    with pytest.raises(InputError, match="writable by group/others"):
        load_emulation_roots(d)
    (d / "gpu").chmod(0o700)
    if os.geteuid() != 0:
        return  # only root can give files away; the mode checks above hold for every user
    for p in (d / "snp" / "ark.key", d):
        os.chown(p, 65534, 65534)
        with pytest.raises(EmulationPkiError, match="belongs to uid 65534"):
            EmulationPki.load(d)
        os.chown(p, 0, 0)
    os.chown(d / "rim" / "root.pem", 65534, 65534)
    with pytest.raises(EmulationPkiError, match="belongs to uid 65534"):
        EmulationPki.load(d)
