"""`flextrain run` through the real CLI: report, plot, exported sub-models, SIGINT and
--resume, an aggregator crash, and refusals before anything starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flextrain.core.export import load_submodel
from flextrain.data import load_dataset
from tests.integration.procs import child_env, wait_for


def write_job(tmp: Path, *, rounds: int = 3, dataset: dict[str, object] | None = None, name: str = "local") -> Path:
    tiers = [
        {"apiVersion": "flextrain.dev/v1alpha1", "kind": "DeviceTier", "metadata": {"name": "box"},
         "spec": {"capacity": {"parameters": 6000}}},
    ]
    job = {
        "apiVersion": "flextrain.dev/v1alpha1",
        "kind": "FlexTrainJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"family": "resnet", "layers": 8},
            "dataset": dataset or {"name": "synthetic", "limit": 900, "seed": 3},
            "training": {"rounds": rounds, "localEpochs": 3, "batchSize": 32},
            "tiers": [
                {"name": "weak", "deviceTierRef": "box", "replicas": 2, "depth": "auto"},
                {"name": "strong", "deviceTierRef": "box", "replicas": 1, "depth": 3},
            ],
        },
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump_all([*tiers, job], sort_keys=False))
    return path


def flextrain(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flextrain", *args], cwd=cwd, env=child_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


@pytest.mark.timeout(300)
def test_run_writes_report_plot_checkpoint_and_sub_models(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    proc = flextrain("run", str(job), cwd=tmp_path)
    out, _ = proc.communicate(timeout=280)
    assert proc.returncode == 0, out
    run = tmp_path / "runs" / "local"
    report = (run / "report.md").read_text()
    assert "| weak | 1 (auto) | 2 |" in report and "| strong | 3 (fixed) | 1 |" in report
    assert (run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "checkpoints").glob("round-*.pt"))
    assert "round 3/3 done" in out
    # The weak tier's export holds only its prefix, and it predicts well above chance.
    meta = json.loads((run / "models" / "weak.json").read_text())
    assert meta["depth"] == 1 and meta["accuracy"] > 0.2
    from safetensors.torch import load_file

    names = set(load_file(str(run / "models" / "weak.safetensors")))
    assert names and not any(n.startswith(("blocks.1.", "blocks.2.")) for n in names)
    model, _ = load_submodel(run / "models" / "weak.safetensors")
    test = load_dataset("synthetic", seed=3, limit=900).test
    with torch.no_grad():
        accuracy = (model(test.images).argmax(dim=1) == test.labels).float().mean().item()
    assert accuracy > 0.2, accuracy  # chance is 0.1


@pytest.mark.timeout(400)
def test_sigint_keeps_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    job = write_job(tmp_path, rounds=6)
    proc = flextrain("run", str(job), cwd=tmp_path)
    checkpoints = tmp_path / "runs" / "local" / "checkpoints"
    wait_for(lambda: any(checkpoints.glob("round-*.pt")), 200, "a first checkpoint")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "--resume" in out
    kept = sorted(checkpoints.glob("round-*.pt"))
    assert kept, "SIGINT lost the checkpoint"
    again = flextrain("run", str(job), cwd=tmp_path)
    refused, _ = again.communicate(timeout=60)
    assert again.returncode == 1 and "--resume" in refused
    resumed = flextrain("run", str(job), "--resume", cwd=tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    log = (tmp_path / "runs" / "local" / "logs" / "aggregator.log").read_text()
    assert "resumed job local after round" in log


@pytest.mark.timeout(400)
def test_runner_restarts_killed_processes_and_the_run_completes(tmp_path: Path) -> None:
    job = write_job(tmp_path, rounds=6)
    proc = flextrain("run", str(job), cwd=tmp_path)
    run = tmp_path / "runs" / "local"
    checkpoints = run / "checkpoints"
    wait_for(lambda: (checkpoints / "round-000002.pt").exists(), 200, "two rounds")
    os.kill(int((run / ".state" / "aggregator.pid").read_text()), signal.SIGKILL)
    wait_for(lambda: any(p.name >= "round-000004.pt" for p in checkpoints.glob("round-*.pt")), 200, "four rounds")
    os.kill(int((run / ".state" / "trainer-weak-0.pid").read_text()), signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "aggregator: crashed (signal 9); restarting" in out
    assert "trainer-weak-0: crashed (signal 9); restarting" in out
    assert "resumed job local after round" in (run / "logs" / "aggregator.log").read_text()


def test_invalid_manifest_is_refused_with_the_validate_messages(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    job.write_text(job.read_text().replace("replicas: 2", "replicas: 0"))
    run = subprocess.run([sys.executable, "-m", "flextrain", "run", str(job)], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60)
    check = subprocess.run([sys.executable, "-m", "flextrain", "validate", str(job)], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and check.returncode == 1
    problem = next(line for line in check.stdout.splitlines() if "replicas" in line)
    assert problem in run.stderr
    assert not (tmp_path / "runs").exists(), "a refused run must not create anything"


def test_missing_dataset_directory_names_the_path_and_how_to_get_it(tmp_path: Path) -> None:
    job = write_job(tmp_path, dataset={"name": "fashion-mnist", "source": {"path": str(tmp_path / "nowhere")}})
    run = subprocess.run([sys.executable, "-m", "flextrain", "run", str(job)], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert str(tmp_path / "nowhere") in run.stderr and "dataset-fashion-mnist" in run.stderr


def test_a_busy_user_port_is_a_clear_error(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "flextrain", "run", str(job), "--port", str(port)],
            cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60,
        )
    assert run.returncode == 1 and f"port {port} is not free" in run.stderr


@pytest.mark.timeout(300)
def test_a_vit_job_runs_end_to_end_and_exports_its_prefixes(tmp_path: Path) -> None:
    job = {
        "apiVersion": "flextrain.dev/v1alpha1",
        "kind": "FlexTrainJob",
        "metadata": {"name": "vit"},
        "spec": {
            "model": {
                "family": "vit",
                "layers": 3,
                "vit": {"embedDim": 16, "heads": 2, "patchSize": 4, "mlpRatio": 2},
            },
            "dataset": {"name": "synthetic", "limit": 900, "seed": 3},
            "training": {
                "rounds": 4,
                "localEpochs": 3,
                "batchSize": 32,
                "optimizer": {"name": "adam", "learningRate": 0.005},
                # the anchor option through `flextrain run`, on the other family
                "distillation": {"anchor": {"loss": "ce", "tiers": "all"}},
            },
            "tiers": [
                {"name": "weak", "deviceTierRef": "box", "replicas": 1, "depth": "auto"},
                {"name": "strong", "deviceTierRef": "box", "replicas": 1, "depth": 3},
            ],
        },
    }
    # depth 1 of this ViT has 2,762 parameters, depth 2 has 4,986
    tier = {"apiVersion": "flextrain.dev/v1alpha1", "kind": "DeviceTier", "metadata": {"name": "box"},
            "spec": {"capacity": {"parameters": 4000}}}
    path = tmp_path / "vit.yaml"
    path.write_text(yaml.safe_dump_all([tier, job], sort_keys=False))
    proc = flextrain("run", str(path), cwd=tmp_path)
    out, _ = proc.communicate(timeout=280)
    assert proc.returncode == 0, out
    run = tmp_path / "runs" / "vit"
    report = (run / "report.md").read_text()
    assert "- model: vit-3 (embed_dim 16, heads 2, mlp_ratio 2, patch_size 4)" in report
    assert "distillation beta 0.2 (probs), anchor ce (tiers: all)" in report
    assert "| weak | 1 (auto) | 1 | 2,762 (" in report
    meta = json.loads((run / "models" / "weak.json").read_text())
    assert (meta["family"], meta["depth"], meta["parameters"]) == ("vit", 1, 2762)
    assert meta["options"] == {"embed_dim": 16, "heads": 2, "mlp_ratio": 2, "patch_size": 4}
    from safetensors.torch import load_file

    names = set(load_file(str(run / "models" / "weak.safetensors")))
    assert "blocks.0.attn.qkv.weight" in names
    assert not any(n.startswith(("blocks.1.", "blocks.2.")) for n in names)
    test = load_dataset("synthetic", seed=3, limit=900).test
    for tier_name in ("weak", "strong"):
        model, _ = load_submodel(run / "models" / f"{tier_name}.safetensors")
        with torch.no_grad():
            accuracy = (model(test.images).argmax(dim=1) == test.labels).float().mean().item()
        assert accuracy > 0.25, (tier_name, accuracy)  # chance is 0.1
