"""The per-job certificates: ECDSA P-256, a CA that can sign serving certificates and
nothing else, a serving certificate for the Service's names only, the lifetimes, and
renewal from the same CA."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from flextrain.operator import certs

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
NAMES = certs.service_dns_names("job-aggregator", "team-a", "cluster.local")


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_service_dns_names_are_every_name_the_service_answers_to() -> None:
    assert NAMES == [
        "job-aggregator",
        "job-aggregator.team-a",
        "job-aggregator.team-a.svc",
        "job-aggregator.team-a.svc.cluster.local",
    ]
    assert certs.service_dns_names("s", "ns", "") == ["s", "s.ns", "s.ns.svc"]
    assert certs.service_dns_names("s", "ns", "corp.example.")[-1] == "s.ns.svc.corp.example"


def test_the_serving_certificate_names_exactly_the_service_and_is_for_servers_only() -> None:
    chain = certs.issue("flextrain team-a/job", NAMES, now=NOW, days=365)
    cert = _cert(chain.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == NAMES
    assert san.get_values_for_type(x509.IPAddress) == []
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert not usage.value.key_encipherment  # ECDSA: no RSA key transport
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(_cert(chain.ca_cert))


def test_the_ca_signs_serving_certificates_and_nothing_else() -> None:
    chain = certs.issue("flextrain team-a/job", NAMES, now=NOW, days=365)
    ca = _cert(chain.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.subject == ca.issuer
    assert ca.subject.rfc4514_string() == "CN=flextrain team-a/job"


def test_both_keys_are_ecdsa_p256_and_match_their_certificates() -> None:
    chain = certs.issue("ca", NAMES, now=NOW)
    for key_pem, cert_pem in ((chain.key, chain.cert), (chain.ca_key, chain.ca_cert)):
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"
        assert key.public_key() == _cert(cert_pem).public_key()
    assert chain.key != chain.ca_key


def test_lifetimes_backdating_and_the_renewal_time() -> None:
    chain = certs.issue("ca", NAMES, now=NOW, days=90)
    cert, ca = _cert(chain.cert), _cert(chain.ca_cert)
    assert cert.not_valid_before_utc == NOW - certs.BACKDATE == chain.not_before
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=90)
    assert chain.not_after == cert.not_valid_after_utc
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == dt.timedelta(days=900)
    assert chain.renew_at(0.25) == chain.not_after - dt.timedelta(days=22.5)


def test_renewal_keeps_the_ca_so_the_trainers_ca_file_stays_valid() -> None:
    chain = certs.issue("ca", NAMES, now=NOW, days=30)
    later = NOW + dt.timedelta(days=25)
    renewed = certs.renew(chain, NAMES, now=later, days=30)
    assert (renewed.ca_cert, renewed.ca_key) == (chain.ca_cert, chain.ca_key)
    assert renewed.cert != chain.cert and renewed.key != chain.key
    assert renewed.not_before == later - certs.BACKDATE
    _cert(renewed.cert).verify_directly_issued_by(_cert(chain.ca_cert))


def test_renewal_issues_a_new_chain_when_the_ca_would_expire_first() -> None:
    chain = certs.issue("flextrain team-a/job", NAMES, now=NOW, days=10)  # CA: 100 days
    late = NOW + dt.timedelta(days=95)
    renewed = certs.renew(chain, NAMES, now=late, days=10)
    assert renewed.ca_cert != chain.ca_cert
    ca = _cert(renewed.ca_cert)
    assert ca.subject.rfc4514_string() == "CN=flextrain team-a/job"
    _cert(renewed.cert).verify_directly_issued_by(ca)


def test_load_reads_back_what_issue_wrote_and_names_what_is_missing() -> None:
    chain = certs.issue("ca", NAMES, now=NOW)
    assert certs.load(chain.secret_data()) == chain
    data = chain.secret_data()
    del data[certs.CA_KEY_KEY]
    with pytest.raises(certs.CertificateError, match=r"ca\.key"):
        certs.load(data)
    with pytest.raises(certs.CertificateError, match="not a PEM certificate"):
        certs.load({**chain.secret_data(), certs.CERT_KEY: "garbage"})


@pytest.mark.parametrize(("names", "days"), [([], 1.0), (NAMES, 0.0), (NAMES, -5.0)])
def test_issue_refuses_what_cannot_make_a_usable_certificate(names: list[str], days: float) -> None:
    with pytest.raises(certs.CertificateError):
        certs.issue("ca", names, now=NOW, days=days)
