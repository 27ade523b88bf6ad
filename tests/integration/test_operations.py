"""Running the aggregator as an operator would: metrics, compressed transport, TLS,
graceful SIGTERM."""

from __future__ import annotations

import datetime
import ipaddress
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from flextrain.core.models import ModelSpec
from flextrain.trainer.client import AggregatorClient, Fatal
from flextrain.trainer.config import TrainerConfig
from tests.integration.conftest import Status
from tests.integration.procs import TOKEN, make_cluster, tiny_job, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_float16_transport_halves_bytes_metrics_and_graceful_stop(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, tiny_job("half", aggregation={"compression": "float16"}))
    metrics_port = _free_port()
    try:
        aggregator = cluster.start_aggregator("--metrics-port", str(metrics_port))
        trainers = cluster.start_all_trainers()
        for proc in trainers:
            assert proc.wait(timeout=180) == 0, cluster.logs()
        status = Status(cluster.port)
        try:
            final = status()
        finally:
            status.close()
        assert final.done and all(a.accuracy > 0.2 for a in final.accuracy), final.accuracy
        deep = next(t for t in final.tiers if t.tier == "deep")
        state = ModelSpec("resnet", 8, 10, 1, 8).build().state_dict()
        half_bytes = sum(t.numel() * (2 if t.is_floating_point() else 8) for t in state.values())
        assert deep.bytes_received == deep.bytes_sent == 3 * half_bytes  # 3 rounds
        full_bytes = sum(t.numel() * t.element_size() for t in state.values())
        assert half_bytes < 0.51 * full_bytes
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        for name in (
            "flextrain_rounds_completed_total",
            "flextrain_round_duration_seconds_bucket",
            'flextrain_bytes_received_total{job_name="half",tier="deep"}',
            "flextrain_bytes_sent_total",
            "flextrain_updates_accepted_total",
            "flextrain_clients_connected",
            'flextrain_accuracy{depth="3",job_name="half"}',
        ):
            assert name in text, name
        aggregator.kill(signal.SIGTERM)
        assert aggregator.wait(timeout=30) == 0
        assert "stopping gracefully" in aggregator.output()
    finally:
        cluster.close()


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flextrain test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_tls_clients_with_the_ca_connect_and_plaintext_clients_do_not(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    cluster = make_cluster(tmp_path / "tls", tiny_job("tls"))
    try:
        cluster.start_aggregator("--tls-cert", str(cert), "--tls-key", str(key), checkpoints=False)
        address = f"localhost:{cluster.port}"
        secure = AggregatorClient(TrainerConfig(address, TOKEN, "tls", "deep", 3, 0, tls_ca=ca))
        try:
            assert secure.join().client_id == "deep-0"
        finally:
            secure.close()
        plain = AggregatorClient(TrainerConfig(address, TOKEN, "tls", "deep", 3, 0))
        try:
            with pytest.raises(Exception) as info:
                wait_for(lambda: plain.join(), 5, "a plaintext join")
            assert not isinstance(info.value, Fatal) or "UNAVAILABLE" in str(info.value)
        finally:
            plain.close()
    finally:
        cluster.close()
