"""The operator benchmark (``python -m benchmarks.operator``): how it reads the API
server's audit log and checks the issue's targets, a quick run of its emulator backend,
and (slow) a run of its real backend: control plane, helm chart and the operator with
the chart's ServiceAccount."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.operator.bench import targets
from benchmarks.operator.real import OPERATOR_USER, AuditLog, _breakdown

REPO = Path(__file__).resolve().parents[2]


def _event(
    audit_id: str, stage: str, verb: str, ref: dict[str, str], user: str = OPERATOR_USER
) -> str:
    return json.dumps(
        {
            "auditID": audit_id,
            "stage": stage,
            "verb": verb,
            "user": {"username": user},
            "objectRef": ref,
            "responseStatus": {"code": 201},
            "userAgent": "flextrain-operator/0",
            "requestReceivedTimestamp": "2026-12-06T00:00:01.250000Z",
            "stageTimestamp": "2026-12-06T00:00:01.750000Z",
            "requestURI": "/x",
        }
    )


def test_audit_log_counts_each_operator_request_once_and_by_job(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = [
        _event(
            "a",
            "ResponseComplete",
            "create",
            {"resource": "secrets", "namespace": "default", "name": "bench-007-token"},
        ),
        _event("b", "ResponseStarted", "watch", {"resource": "pods"}),
        _event("b", "ResponseComplete", "watch", {"resource": "pods"}),
        _event(
            "c",
            "ResponseComplete",
            "create",
            {"resource": "events", "namespace": "default", "name": "bench-007.0123456789abcdef"},
        ),
        _event(
            "d",
            "ResponseComplete",
            "patch",
            {
                "resource": "flextrainjobs",
                "subresource": "status",
                "namespace": "default",
                "name": "bench-012",
            },
        ),
        _event(
            "e",
            "ResponseComplete",
            "create",
            {"resource": "secrets", "namespace": "default", "name": "x"},
            user="admin",
        ),
        _event(  # the leader election's renewal: not the handlers' work
            "f",
            "ResponseComplete",
            "update",
            {"resource": "leases", "namespace": "flextrain-system", "name": "ft-flextrain-leader"},
        ),
    ]
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])  # a line still being written
    audit = AuditLog(path)
    assert len(audit.read()) == 2
    with path.open("a") as f:
        f.write(lines[3][40:] + "\n" + "\n".join(lines[4:]) + "\n")
    requests = audit.read()
    assert [(r.verb, r.resource, r.job) for r in requests] == [
        ("create", "secrets", "bench-007"),
        ("watch", "pods", None),
        ("create", "events", "bench-007"),
        ("patch", "flextrainjobs/status", "bench-012"),
    ]
    start = requests[0].at
    assert requests[0].done - start == pytest.approx(0.5)
    assert len(audit.between(start, start + 1)) == 4 and audit.between(start + 1, start + 2) == []
    breakdown = _breakdown(requests, {"bench-007": start - 1.0})
    assert breakdown["operator's first request"]["p50"] == pytest.approx(1.0)
    assert breakdown["last child create answered"]["p50"] == pytest.approx(1.5)


def test_targets_are_checked_on_the_quantity_they_name() -> None:
    run = {
        "backend": "real",
        "jobs": 50,
        "children_seconds": {"p50": 0.4, "p95": 0.9, "max": 1.0},
        "rss_peak_mib": 150.0,  # 157.3 MB: over 150 MB although under 150 MiB
        "rss_steady_mib": 120.0,
        "rss_with_jobs_mib": 120.0,
        "steady_requests_per_job_per_minute": 0.02,  # a watch renewed: not a job's request
        "steady_job_requests_per_job_per_minute": 0.0,
    }
    checked = {t["target"]: t["met"] for t in targets(run)}
    assert checked == {
        "creation -> all children p50 < 0.5 s at 50 jobs": True,
        "operator RSS peak (VmHWM) < 150 MB at 50 jobs": False,
        "operator RSS steady (VmRSS) < 150 MB at 50 jobs": True,
        "no API request per job in steady state": True,
    }
    assert [t["target"] for t in targets({**run, "jobs": 7})] == [
        "no API request per job in steady state"
    ]


@pytest.mark.timeout(300)
def test_emulator_backend_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "operator.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.operator",
            "--backend",
            "emulator",
            "--jobs",
            "2",
            "--settle",
            "1",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [result] = json.loads(out.read_text())
    assert result["backend"] == "emulator" and result["jobs"] == 2
    assert result["children_seconds"]["p50"] > 0
    assert result["steady_requests_per_job_per_minute"] == 0
    assert "no API request per job in steady state" in done.stdout


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_real_backend_runs_against_the_control_plane(tmp_path: Path) -> None:
    out = tmp_path / "operator.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.operator",
            "--jobs",
            "3",
            "--settle",
            "5",
            "--out",
            str(out),
            "--keep",
            str(tmp_path / "logs"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [result] = json.loads(out.read_text())
    assert result["backend"] == "real" and result["rbac_denials"] == 0
    assert result["scheduled_seconds"]["p50"] >= result["children_seconds"]["p50"] > 0
    assert result["running_seconds_from_creation"]["p50"] >= result["ready_seconds"]["p50"]
    # 5 creates, kopf's finalizer PATCH, Events and status PATCHes: all the job's own.
    assert result["creation_job_requests_per_job"] == result["creation_requests_per_job"] >= 7
    assert set(result["creation_response_codes"]) <= {"200", "201"}
    assert result["steady_job_requests_per_job_per_minute"] == 0
    assert result["rss_peak_mib"] >= result["rss_idle_mib"] > 0
