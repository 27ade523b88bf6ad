"""Compressed transport: bytes on the wire and accuracy with float32, float16 and
bfloat16 tensors, measured on real `flextrain run` jobs (same job, same seed).

    python -m benchmarks.compression [--job examples/quickstart.yaml] [--out DIR]

Prints a markdown table and writes it (with the raw numbers as JSON) to --out.
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

VARIANTS = ("none", "float16", "bfloat16")


def run_variant(job_file: Path, compression: str, out: Path) -> dict[str, object]:
    docs = list(yaml.safe_load_all(job_file.read_text()))
    for doc in docs:
        if doc and doc.get("kind") == "FlexTrainJob":
            doc["spec"].setdefault("aggregation", {})["compression"] = compression
            doc["metadata"]["name"] = f"{doc['metadata']['name']}-{compression}"
    variant_file = out / f"job-{compression}.yaml"
    variant_file.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    run_dir = out / compression
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flextrain",
            "run",
            str(variant_file),
            "--out",
            str(run_dir),
            "--fresh",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{compression}: flextrain run failed:\n{done.stdout}\n{done.stderr}")
    checkpoint = torch.load(
        sorted((run_dir / "checkpoints").glob("round-*.pt"))[-1], weights_only=True
    )
    final_round = checkpoint["completed_rounds"]
    accuracy = {
        h["depth"]: h["accuracy"]
        for h in checkpoint["accuracy_history"]
        if h["round"] == final_round
    }
    counters = checkpoint["tier_counters"]
    return {
        "compression": compression,
        "bytes_to_aggregator": sum(c["bytes_received"] for c in counters.values()),
        "bytes_from_aggregator": sum(c["bytes_sent"] for c in counters.values()),
        "accuracy": accuracy,
        "wall_seconds": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=Path("examples/quickstart.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/compression"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for compression in VARIANTS:
        print(f"running {args.job} with compression {compression} ...", flush=True)
        rows.append(run_variant(args.job, compression, args.out))
    base = rows[0]
    depths = sorted(base["accuracy"])  # type: ignore[arg-type]
    lines = [
        f"Compressed transport on `{args.job}` (same seed; accuracy after the last round)",
        "",
        "| wire dtype | bytes up | bytes down | vs float32 | "
        + " | ".join(f"accuracy depth {d}" for d in depths)
        + " | wall s |",
        "|---|---|---|---|" + "---|" * len(depths) + "---|",
    ]
    for row in rows:
        ratio = row["bytes_to_aggregator"] / base["bytes_to_aggregator"]  # type: ignore[operator]
        acc = row["accuracy"]
        lines.append(
            f"| {'float32' if row['compression'] == 'none' else row['compression']} | {row['bytes_to_aggregator']:,} | "
            f"{row['bytes_from_aggregator']:,} | {100 * ratio:.1f} % | "
            + " | ".join(f"{acc[d]:.4f}" for d in depths)  # type: ignore[index]
            + f" | {row['wall_seconds']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    (args.out / "compression.md").write_text(table + "\n")
    (args.out / "compression.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
