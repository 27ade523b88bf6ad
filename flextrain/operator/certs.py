"""Per-job certificates: a CA of the job's own and the aggregator's serving certificate.

Every FlexTrainJob gets a CA that nothing else trusts (its trainers and the operator
verify the aggregator against it, and against nothing else) and a serving certificate
for the aggregator's Service names, signed by it. Both keys are ECDSA P-256: issuing a
job's pair costs about a millisecond of CPU (an RSA-2048 key alone costs ~50-100 ms).

| Secret key | what | who mounts it |
|---|---|---|
| `ca.crt` | the job's CA certificate | trainers (only this key), the aggregator |
| `tls.crt` | the aggregator's serving certificate (for the Service's DNS names) | the aggregator |
| `tls.key` | its private key | the aggregator |
| `ca.key` | the CA's private key: renews `tls.crt` with the same CA | nobody (the operator reads it) |

The keys are those cert-manager writes (`ca.crt`, `tls.crt`, `tls.key`), so the pods
mount either Secret alike. The CA key stays in the Secret so that the operator can renew
the serving certificate without changing the CA the running trainers hold; whoever can
read the Secret can read `tls.key` and the job's token already, so it gives away
nothing more (the CA is trusted by this job's trainers only).

Lifetimes: the serving certificate `days` (default 365, the operator's
`tls_certificate_days`), the CA ten times that, so a job renews its serving
certificate (when `renew_fraction` of its lifetime is left, see `renew_at`) many times
before its CA would need renewing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_KEY: Final = "ca.crt"
CERT_KEY: Final = "tls.crt"
KEY_KEY: Final = "tls.key"
CA_KEY_KEY: Final = "ca.key"
#: The CA lives this many times longer than the serving certificates it signs.
CA_LIFETIME_FACTOR: Final = 10
#: Validity starts this long before the moment of issuing (clocks of nodes differ).
BACKDATE: Final = dt.timedelta(minutes=5)


class CertificateError(ValueError):
    """Certificate material that cannot be used (unreadable, not ECDSA, not a CA)."""


def secret_keys() -> tuple[str, ...]:
    """The Secret keys of a chain."""
    return (CA_CERT_KEY, CERT_KEY, KEY_KEY, CA_KEY_KEY)


def service_dns_names(service: str, namespace: str, cluster_domain: str) -> list[str]:
    """The names a Service answers to in the cluster: `<svc>`, `<svc>.<ns>`,
    `<svc>.<ns>.svc` and, when the cluster domain is set, `<svc>.<ns>.svc.<domain>`."""
    out = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    if cluster_domain:
        out.append(f"{service}.{namespace}.svc.{cluster_domain.strip('.')}")
    return out


@dataclass(frozen=True)
class Certificates:
    """PEM texts of one job's chain, and when its serving certificate expires."""

    ca_cert: str
    ca_key: str
    cert: str
    key: str
    not_before: dt.datetime
    not_after: dt.datetime

    def secret_data(self) -> dict[str, str]:
        """The Secret keys (plain text; the caller base64-encodes)."""
        return {CA_CERT_KEY: self.ca_cert, CERT_KEY: self.cert, KEY_KEY: self.key, CA_KEY_KEY: self.ca_key}

    def renew_at(self, fraction: float) -> dt.datetime:
        """When the serving certificate is due for renewal: `fraction` of its lifetime left."""
        return self.not_after - (self.not_after - self.not_before) * fraction


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _names(dns_names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dns_names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _serving(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: Sequence[str],
    now: dt.datetime,
    days: float,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = now - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0][:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_names(dns_names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_name: str, dns_names: Sequence[str], *, now: dt.datetime, days: float = 365.0
) -> Certificates:
    """A new CA (`ca_name` as its common name) and a serving certificate for `dns_names`
    (DNS names, or IP addresses written as such), valid `days` from `now`."""
    if not dns_names:
        raise CertificateError("a serving certificate needs at least one name")
    if not days > 0:
        raise CertificateError(f"certificate lifetime must be > 0 days, got {days}")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name[:64])])
    start = now - BACKDATE
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days * CA_LIFETIME_FACTOR))
        # path length 0: the CA signs serving certificates, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert, key = _serving(ca_cert, ca_key, dns_names, now, days)
    return Certificates(
        _pem_cert(ca_cert), _pem_key(ca_key), _pem_cert(cert), _pem_key(key),
        cert.not_valid_before_utc, cert.not_valid_after_utc,
    )


def renew(current: Certificates, dns_names: Sequence[str], *, now: dt.datetime, days: float = 365.0) -> Certificates:
    """A new serving certificate and key from the same CA (the trainers' CA file stays
    valid). When the CA itself has less left than the new certificate would live, the
    whole chain is issued anew (see docs/operator.md, "TLS": trainers then need the
    new CA, which they read when their pod restarts)."""
    ca_cert = x509.load_pem_x509_certificate(current.ca_cert.encode())
    ca_key = serialization.load_pem_private_key(current.ca_key.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the job's CA key is not an ECDSA key")
    if ca_cert.not_valid_after_utc < now + dt.timedelta(days=days):
        common = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return issue(str(common[0].value) if common else "flextrain", dns_names, now=now, days=days)
    cert, key = _serving(ca_cert, ca_key, dns_names, now, days)
    return Certificates(
        current.ca_cert, current.ca_key, _pem_cert(cert), _pem_key(key),
        cert.not_valid_before_utc, cert.not_valid_after_utc,
    )


def load(data: dict[str, str]) -> Certificates:
    """The chain from a Secret's decoded data; raises CertificateError naming the key
    that is missing or unreadable."""
    missing = [k for k in (CA_CERT_KEY, CA_KEY_KEY, CERT_KEY, KEY_KEY) if not data.get(k)]
    if missing:
        raise CertificateError(f"the Secret has no {', '.join(missing)}")
    try:
        cert = x509.load_pem_x509_certificate(data[CERT_KEY].encode())
        x509.load_pem_x509_certificate(data[CA_CERT_KEY].encode())
    except ValueError as exc:
        raise CertificateError(f"{CERT_KEY} or {CA_CERT_KEY} is not a PEM certificate: {exc}") from None
    return Certificates(
        data[CA_CERT_KEY], data[CA_KEY_KEY], data[CERT_KEY], data[KEY_KEY],
        cert.not_valid_before_utc, cert.not_valid_after_utc,
    )
