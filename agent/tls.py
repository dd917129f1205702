"""TLS material the operator names, checked when it is read: gRPC parses it only when a server
starts or a channel first connects, and says why in its own log lines on stderr (then a bind or
handshake failure that names nothing), after work that may not be repeatable."""

from __future__ import annotations

from attest.errors import InputError


def check_tls_pair(cert_path: str, cert_pem: bytes, key_path: str, key_pem: bytes) -> None:
    """``--tls-cert`` must be a PEM certificate chain and ``--tls-key`` the unencrypted PEM
    private key of its first certificate: grpc would only find out when the service starts,
    after the one-shot release was spent."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{cert_path}: not a PEM certificate chain") from None
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError(f"{key_path}: not an unencrypted PEM private key") from None
    try:
        cert_spki = (
            chain[0].public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{cert_path}: its certificate's public key is not supported") from None
    key_spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if cert_spki != key_spki:
        raise InputError(f"{key_path}: not the private key of the first certificate in {cert_path}")


def check_ca_bundle(path: str, pem: bytes) -> None:
    """``pem`` must hold one or more PEM certificates (a CA bundle to trust)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        x509.load_pem_x509_certificates(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path}: not PEM certificates (a CA bundle)") from None


__all__ = ["check_ca_bundle", "check_tls_pair"]
