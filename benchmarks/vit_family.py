"""The ViT family on a real federated job: parameter and MAC share of every prefix, and
the held-out accuracy of every depth of the final global model.

    python -m benchmarks.vit_family [--job examples/digits-vit.yaml] [--out DIR] [--reuse] [--single]

Runs `flextrain run` on the job (unless --reuse finds a finished run in --out), loads
its last checkpoint and evaluates the global model at depths 1..K on the job's
held-out split -- also the depths no tier trained. With --single every tier trains the
full model instead (federated "Single": the same devices, data and rounds), so its
truncated prefixes show what FlexTrain adds. Prints a markdown table and writes it
(with the raw numbers as JSON) to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from flextrain.core.centralised import evaluate
from flextrain.core.models import ModelSpec
from flextrain.data import load_dataset, make_loader
from flextrain.local.runner import load_job


def run_job(job_file: Path, run_dir: Path) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flextrain", "run", str(job_file), "--out", str(run_dir), "--fresh"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"flextrain run failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started


def single_variant(job_file: Path, out: Path) -> Path:
    """The job with every tier at the full depth (named <job>-single)."""
    docs = list(yaml.safe_load_all(job_file.read_text()))
    for doc in docs:
        if doc and doc.get("kind") == "FlexTrainJob":
            doc["metadata"]["name"] += "-single"
            for tier in doc["spec"]["tiers"]:
                tier["depth"] = doc["spec"]["model"]["layers"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=Path("examples/digits-vit.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/vit"))
    parser.add_argument("--reuse", action="store_true", help="evaluate the run already in --out")
    parser.add_argument("--single", action="store_true", help="every tier trains the full model")
    args = parser.parse_args()
    if args.single:
        args.out = args.out / "single"
        args.job = single_variant(args.job, args.out)
    plan, _ = load_job([args.job])
    spec = ModelSpec.for_job(plan.job)
    run_dir = args.out / "run"
    wall = None
    if not (args.reuse and list((run_dir / "checkpoints").glob("round-*.pt"))):
        print(f"running {args.job} ...", flush=True)
        wall = run_job(args.job, run_dir)
    checkpoint = torch.load(
        sorted((run_dir / "checkpoints").glob("round-*.pt"))[-1], weights_only=True
    )
    model = spec.build()
    model.load_state_dict(checkpoint["global_state"])
    ds = plan.job.spec.dataset
    test = load_dataset(ds.name, seed=ds.seed, limit=ds.limit).test
    depths = list(range(1, spec.num_blocks + 1))
    accuracy = evaluate(model, make_loader(test, batch_size=256), depths)
    profile = spec.profile()
    trained: dict[int, str] = {}
    for t in plan.tiers:
        trained[t.depth] = ", ".join(filter(None, (trained.get(t.depth), t.name)))
    lines = [
        f"{spec.label} on {ds.name}: {checkpoint['completed_rounds']} rounds, "
        f"{len(test)} held-out images" + (f", wall {wall:.0f} s" if wall else ""),
        "",
        "| depth | tier | parameters | parameter share | MAC share | held-out accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for k in depths:
        lines.append(
            f"| {k} | {trained.get(k, '-')} | {profile.parameters(k):,} | "
            f"{100 * profile.parameter_fraction(k):.1f} % | {100 * profile.mac_fraction(k):.1f} % | "
            f"{accuracy[k]:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vit.md").write_text(table + "\n")
    raw = {
        "model": spec.to_dict(),
        "rounds": checkpoint["completed_rounds"],
        "wall_seconds": wall,
        "parameters": {k: profile.parameters(k) for k in depths},
        "mac_share": {k: profile.mac_fraction(k) for k in depths},
        "accuracy": accuracy,
        "tier_depths": plan.depths,
    }
    (args.out / "vit.json").write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
