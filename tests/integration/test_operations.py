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
import torch

from flextrain.contract.credentials import tier_key
from flextrain.core.models import ModelSpec
from flextrain.trainer.client import AggregatorClient
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


def _certificates(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flextrain test CA")])

    def build(subject: x509.Name, public_key: object, serial: int) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
            .public_key(public_key).serial_number(serial)  # type: ignore[arg-type]
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        )

    ca = build(ca_name, ca_key.public_key(), 1).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    ).sign(ca_key, hashes.SHA256())
    out = {"ca": tmp / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, serial in (("server", 2), ("client", 3)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(), serial)
        if name == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        out[name] = tmp / f"{name}.pem"
        out[f"{name}-key"] = tmp / f"{name}.key"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}-key"].write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return out


def _join(port: int, **tls: Path) -> str:
    client = AggregatorClient(TrainerConfig(f"localhost:{port}", tier_key(TOKEN, "tls", "deep"), "tls", "deep", 3, 0, **tls))  # type: ignore[arg-type]
    try:
        return client.join().client_id
    finally:
        client.close()


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    cluster = make_cluster(tmp_path / "tls", tiny_job("tls"))
    try:
        cluster.start_aggregator("--tls-cert", str(certs["server"]), "--tls-key", str(certs["server-key"]), checkpoints=False)
        assert _join(cluster.port, tls_ca=certs["ca"]) == "deep-0"
        with pytest.raises(Exception):  # noqa: B017 - plaintext against TLS: any transport error
            wait_for(lambda: _join(cluster.port), 3, "a plaintext join")
        cluster.close()
        cluster.procs.clear()
        cluster.start_aggregator(
            "--tls-cert", str(certs["server"]), "--tls-key", str(certs["server-key"]),
            "--tls-client-ca", str(certs["ca"]), checkpoints=False,
        )
        assert _join(cluster.port, tls_ca=certs["ca"], tls_cert=certs["client"], tls_key=certs["client-key"]) == "deep-0"
        with pytest.raises(Exception):  # noqa: B017 - no client certificate: the handshake fails
            wait_for(lambda: _join(cluster.port, tls_ca=certs["ca"]), 3, "a join without a client certificate")
    finally:
        cluster.close()


def test_pull_can_reuse_its_receive_buffer(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, tiny_job("reuse", tiers=[("deep", 3, 1)], training={"rounds": 2}))
    try:
        cluster.start_aggregator(checkpoints=False)
        client = AggregatorClient(TrainerConfig(f"127.0.0.1:{cluster.port}", tier_key(TOKEN, "reuse", "deep"), "reuse", "deep", 3, 0))
        try:
            joined = client.join()
            first = client.pull(joined.client_id, 1, reuse_buffer=True)
            update = {k: v + 1 if v.is_floating_point() else v.clone() for k, v in first.tensors.items()}
            client.push(joined.client_id, 1, update, 10, joined.training.wire_dtype, 0.0, 0.0)
            second = client.pull(joined.client_id, 2, wait_seconds=60, reuse_buffer=True)
            assert second.round == 2
            name = "head.fc.weight"
            # Same memory: the second model was received where the first one was...
            assert second.tensors[name].data_ptr() == first.tensors[name].data_ptr()
            for key, value in update.items():  # one client: the merge is its update
                assert torch.equal(second.tensors[key], value), key
            # ...so the first pull's tensors now read the second model, as documented.
            assert torch.equal(first.tensors[name], update[name])
            fresh = client.pull(joined.client_id, 2, wait_seconds=60)
            assert fresh.tensors[name].data_ptr() != second.tensors[name].data_ptr()
            assert all(torch.equal(fresh.tensors[k], second.tensors[k]) for k in update)
        finally:
            client.close()
    finally:
        cluster.close()
