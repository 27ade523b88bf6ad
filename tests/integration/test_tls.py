"""TLS as the operator sets it up, with real processes on loopback: an aggregator serving
the job's certificate (flextrain.operator.certs, the files the job's Secret holds), real
`flextrain trainer` processes verifying it against a CA and the Service name, the
operator's status client, the plaintext health port for probes, and a renewed
certificate served without a restart."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flextrain.operator import certs
from flextrain.proto.v1 import aggregator_pb2 as pb
from flextrain.proto.v1 import aggregator_pb2_grpc as pb_grpc
from flextrain.wire.auth import metadata
from flextrain.wire.status import StatusClient, StatusUnavailable
from tests.integration.procs import TOKEN, Cluster, make_cluster, tiny_job, wait_for

NAMESPACE = "team-a"
SERVICE = "tls-aggregator"
#: What the operator tells trainers to verify (names.tls_server_name).
SERVER_NAME = f"{SERVICE}.{NAMESPACE}.svc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_chain(chain: certs.Certificates, where: Path) -> dict[str, Path]:
    """The Secret's keys as the kubelet mounts them: one file per key."""
    where.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, text in chain.secret_data().items():
        (where / key).write_text(text)
        out[key] = where / key
    return out


def _issue(ca_name: str) -> certs.Certificates:
    names = certs.service_dns_names(SERVICE, NAMESPACE, "cluster.local")
    return certs.issue(ca_name, names, now=dt.datetime.now(dt.UTC), days=30)


def _start(tmp_path: Path, chain: dict[str, Path], health_port: int) -> Cluster:
    cluster = make_cluster(tmp_path / "job", tiny_job("tls", tiers=[("deep", 3, 2)], training={"rounds": 1}))
    cluster.start_aggregator(
        "--tls-cert", str(chain[certs.CERT_KEY]), "--tls-key", str(chain[certs.KEY_KEY]),
        "--health-port", str(health_port), checkpoints=False,
    )
    return cluster


def _status(port: int, ca: Path | None, server_name: str | None = SERVER_NAME) -> StatusClient:
    return StatusClient(
        f"127.0.0.1:{port}", TOKEN, ca=ca.read_bytes() if ca else None, server_name=server_name
    )


def _joined(client: StatusClient) -> int:
    return sum(t.joined for t in client.get(timeout=5).tiers)


@pytest.mark.timeout(180)
def test_a_trainer_with_the_jobs_ca_joins_and_one_with_another_ca_is_refused(tmp_path: Path) -> None:
    job = _write_chain(_issue("flextrain team-a/tls"), tmp_path / "job-secret")
    # Another job's CA, with a certificate for the very same names: not trusted.
    other = _write_chain(_issue("flextrain team-a/tls"), tmp_path / "other-secret")
    health_port = _free_port()
    cluster = _start(tmp_path, job, health_port)
    status = _status(cluster.port, job[certs.CA_CERT_KEY])
    try:
        tls = {"FLEXTRAIN_TLS_SERVER_NAME": SERVER_NAME}
        wrong = cluster.start_trainer("deep", 1, FLEXTRAIN_TLS_CA=str(other[certs.CA_CERT_KEY]), **tls)
        cluster.start_trainer("deep", 0, FLEXTRAIN_TLS_CA=str(job[certs.CA_CERT_KEY]), **tls)
        wait_for(lambda: _joined(status) == 1, 90, f"the trainer with the job's CA to join:\n{cluster.logs()}")
        # The wrong CA's trainer keeps retrying its join and never gets in.
        wait_for(lambda: "retrying" in wrong.output(), 30, f"the refused trainer to retry:\n{wrong.output()}")
        assert wrong.popen.poll() is None, wrong.output()
        assert _joined(status) == 1
        assert "join failed" in wrong.output() and "CERTIFICATE_VERIFY_FAILED" in wrong.output(), wrong.output()
    finally:
        status.close()
        cluster.close()


@pytest.mark.timeout(120)
def test_status_client_verifies_ca_and_name_and_probes_use_the_plaintext_health_port(tmp_path: Path) -> None:
    job = _write_chain(_issue("flextrain team-a/tls"), tmp_path / "job-secret")
    other = _write_chain(_issue("flextrain team-a/tls"), tmp_path / "other-secret")
    health_port = _free_port()
    cluster = _start(tmp_path, job, health_port)
    try:
        good = _status(cluster.port, job[certs.CA_CERT_KEY])
        assert good.get().job == "tls"
        good.close()
        refused = {
            "another CA": _status(cluster.port, other[certs.CA_CERT_KEY]),
            "a name the certificate lacks": _status(cluster.port, job[certs.CA_CERT_KEY], "other.team-a.svc"),
            "plaintext": _status(cluster.port, None),
        }
        for what, client in refused.items():
            with pytest.raises(StatusUnavailable):
                client.get(timeout=3)
                pytest.fail(f"GetStatus with {what} succeeded")
            client.close()
        # The health port answers the kubelet's plaintext gRPC probe, and nothing else.
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.AggregatorStub(channel).GetStatus(pb.GetStatusRequest(), metadata=metadata(TOKEN), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        cluster.close()


def _served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the name is checked by the gRPC tests above
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.mark.timeout(120)
def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(tmp_path: Path) -> None:
    first = _issue("flextrain team-a/tls")
    files = _write_chain(first, tmp_path / "secret")
    cluster = _start(tmp_path, files, _free_port())
    try:
        ca = files[certs.CA_CERT_KEY]
        serial = x509.load_pem_x509_certificate(first.cert.encode()).serial_number
        assert _served_serial(cluster.port, ca) == serial
        renewed = certs.renew(first, certs.service_dns_names(SERVICE, NAMESPACE, ""), now=dt.datetime.now(dt.UTC), days=30)
        assert renewed.ca_cert == first.ca_cert  # the trainers' CA file stays valid
        # As the kubelet updates a Secret volume: new files swapped in by rename.
        staged = _write_chain(renewed, tmp_path / "staged")
        time.sleep(0.01)
        for key in (certs.CERT_KEY, certs.KEY_KEY):
            os.replace(staged[key], files[key])
        new_serial = x509.load_pem_x509_certificate(renewed.cert.encode()).serial_number
        wait_for(lambda: _served_serial(cluster.port, ca) == new_serial, 10, "the renewed certificate to be served")
        status = _status(cluster.port, ca)
        assert status.get().job == "tls"  # and gRPC clients verify it
        status.close()
        assert "serving the renewed TLS certificate" in cluster.aggregator.output()  # type: ignore[union-attr]
    finally:
        cluster.close()
