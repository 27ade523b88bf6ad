"""The operator's TLS material across restarts, against the emulated API server: a new
job's chain is issued once and kept in its Secret; a restarted operator reads it back
with the Secret it reads anyway (no new chain); a serving certificate due for renewal is
renewed from the same CA (the trainers' CA file stays valid) and written into the
Secret; one that is not due is left alone."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509

from flextrain.operator import certs
from tests.factories import make_tier
from tests.integration.operator_harness import (
    DEPLOYMENTS,
    FAST,
    NS,
    SECRETS,
    Cluster,
    emulated_cluster,
    eventually,
    node,
    running_operator,
)

pytestmark = pytest.mark.timeout(120)

JOB: dict[str, Any] = {
    "apiVersion": "flextrain.dev/v1alpha1",
    "kind": "FlexTrainJob",
    "metadata": {"name": "secure", "namespace": NS},
    "spec": {
        "model": {"family": "resnet", "layers": 8},
        "dataset": {"name": "synthetic", "limit": 600, "seed": 1},
        "tiers": [{"name": "deep", "deviceTierRef": "local", "replicas": 1, "depth": 3}],
    },
}


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path) as made:
        yield made


def _chain(cluster: Cluster) -> dict[str, str]:
    secret = cluster.get(SECRETS, "secure-token")
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


async def test_a_restarted_operator_keeps_the_chain_and_renews_it_from_the_same_ca_when_due(cluster: Cluster) -> None:
    await cluster.create(node("box-1", {"flextrain.dev/pool": "local"}))
    await cluster.create(make_tier("local", resources={"requests": {"cpu": "1", "memory": "1Gi"}}))
    async with running_operator(cluster, FAST) as op:
        await cluster.create(JOB)
        await eventually(lambda: cluster.get(DEPLOYMENTS, "secure-aggregator"), what="the aggregator")
        assert op.runtime.stats["certificates_issued"] == 1
    issued = certs.load(_chain(cluster))
    token = _chain(cluster)["token"]

    # A restart with a current certificate: read back with the Secret, nothing issued or renewed.
    async with running_operator(cluster, FAST) as op:
        await eventually(lambda: op.runtime.stats["reconciles"] >= 2, what="two passes")
        assert (op.runtime.stats["certificates_issued"], op.runtime.stats["certificates_renewed"]) == (0, 0)
    assert certs.load(_chain(cluster)) == issued

    # A chain issued 300 days ago with a 365-day certificate: less than 0.33 of it is left.
    old = certs.issue("flextrain default/secure", issued_names(issued), now=dt.datetime.now(dt.UTC) - dt.timedelta(days=300))
    data = {k: base64.b64encode(v.encode()).decode() for k, v in old.secret_data().items()}
    await cluster.patch(SECRETS, NS, "secure-token", {"data": data})
    async with running_operator(cluster, FAST) as op:
        renewed = await eventually(
            lambda: (c := _chain(cluster))["tls.crt"] != old.cert and c, what="the renewed certificate"
        )
        assert (op.runtime.stats["certificates_issued"], op.runtime.stats["certificates_renewed"]) == (0, 1)
    assert (renewed["ca.crt"], renewed["ca.key"]) == (old.ca_cert, old.ca_key)
    cert = x509.load_pem_x509_certificate(renewed["tls.crt"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(old.ca_cert.encode()))
    assert abs(cert.not_valid_before_utc - (dt.datetime.now(dt.UTC) - certs.BACKDATE)) < dt.timedelta(minutes=1)
    assert renewed["tls.key"] != old.key
    assert renewed["token"] == token  # the rest of the Secret untouched


def issued_names(chain: certs.Certificates) -> list[str]:
    cert = x509.load_pem_x509_certificate(chain.cert.encode())
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
