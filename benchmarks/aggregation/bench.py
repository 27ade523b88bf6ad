"""Round overhead of the FlexTrain aggregator against Flower, on loopback.

    python -m benchmarks.aggregation [--quick] [--out DIR] [--only flextrain|flower]

Measures, in one run on this machine: the raw loopback gRPC throughput (the ceiling),
our aggregator with 20 fake trainers (no training) on ResNet-56 with the paper's
Table 3 tier mix and on a model of at least 50 MB, and Flower's FedAvg of the same
models with 20 clients in both of its networked paths (legacy `start_server` /
`start_client` and the Deployment Engine). Writes `aggregation.md` (the table) and
`aggregation.json` (raw numbers) to --out (default benchmarks/out/aggregation/).

Flower needs its own virtualenv (it pins protobuf<7, FlexTrain's stubs need >=7):
`benchmarks/aggregation/setup_flower.sh` creates `.venv-flower`; --flower-python
points elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.aggregation import loopback
from benchmarks.aggregation.ours import TABLE3_TIERS, Case
from benchmarks.aggregation.procs import Tracker, cpu_seconds, wait_for

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "out" / "aggregation"
DEFAULT_FLOWER_PYTHON = REPO / ".venv-flower" / "bin" / "python"
MIB = 2**20

#: Targets from the issue.
TARGET_OVERHEAD_RATIO = 0.5  # our round latency / Flower's fastest path
TARGET_BYTES_SHARE = 0.558  # Table 3 mix, share of full-model FedAvg bytes
TARGET_THROUGHPUT_SHARE = 0.70  # of the raw loopback ceiling
#: "A small multiple of the model size": our reading, stated in the report. It is
#: checked on how memory above idle grows with the model: the slope between the same
#: run's smallest FlexTrain configuration and the one checked, both with 20 clients, so
#: that the fixed part (gRPC, its threads and buffers, the allocator) drops out. The
#: plain multiple is reported next to it.
TARGET_MEMORY_MULTIPLE = 4.0
#: The configuration the slope is taken from (a 3.5 MB model, 20 clients).
BASE_MEMORY_CASE = "ours/resnet56-table3"


def resnet_blocks(layers: int) -> int:
    return 3 * ((layers - 2) // 6)


def cases(args: argparse.Namespace) -> dict[str, Case]:
    large_blocks = resnet_blocks(args.large_layers)
    return {
        "resnet56-table3": Case("resnet56-table3", "ResNet-56/100 classes, Table 3 mix", 56, 100, TABLE3_TIERS),
        "resnet56-full": Case("resnet56-full", "ResNet-56/100 classes, all 20 at full depth", 56, 100, (("k27", 27, 20),)),
        "large": Case(
            "large",
            f"ResNet-{args.large_layers}/{args.large_classes:,} classes, all 20 at full depth",
            args.large_layers,
            args.large_classes,
            ((f"k{large_blocks}", large_blocks, 20),),
        ),
        # One client, nobody else on the cores: the protocol's own throughput (framing,
        # checks, merge) against the single-stream loopback figures.
        "large-single": Case(
            "large-single",
            f"ResNet-{args.large_layers}/{args.large_classes:,} classes, one client at full depth",
            args.large_layers,
            args.large_classes,
            ((f"k{large_blocks}", large_blocks, 1),),
        ),
        # Four times the clients: memory must not grow with them (no raw round: only
        # the aggregator's memory is checked here).
        "large-80": Case(
            "large-80",
            f"ResNet-{args.large_layers}/{args.large_classes:,} classes, 80 clients at full depth",
            args.large_layers,
            args.large_classes,
            ((f"k{large_blocks}", large_blocks, 80),),
        ),
    }


@dataclass(frozen=True)
class RawShare:
    """How much of raw loopback our aggregator keeps for the same traffic (the bytes
    are the same by construction)."""

    raw: dict[str, Any]
    #: Median over the measured rounds of raw round r's time / our round r's time, the
    #: two run back to back (run_pair): the verdict. None if the rounds were not paired.
    paired: float | None
    #: Best raw round / our median round: the most conservative reading.
    best: float


def raw_share(res: dict[str, Any], ours_key: str) -> RawShare | None:
    ours = res.get(ours_key, {})
    case = ours_key.split("/", 1)[1]
    raw = res.get("raw/" + case, {})
    if "round_seconds_median" not in ours or "round_seconds_best" not in raw:
        return None
    mine = [r["seconds"] for r in ours.get("rounds", [])]
    theirs = raw.get("round_seconds", [])
    paired = None
    if raw.get("paired") and mine and len(mine) == len(theirs):
        paired = statistics.median(t / m for t, m in zip(theirs, mine, strict=True))
    return RawShare(raw, paired, raw["round_seconds_best"] / ours["round_seconds_median"])


# -- machine -------------------------------------------------------------------------


def _busy_jiffies() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def foreign_load(tracker: Tracker | None = None, seconds: float = 1.0) -> float:
    """Cores kept busy by processes that are not this benchmark's, over `seconds`
    (machine-wide busy time minus this process and the tagged processes alive at both
    ends of the interval)."""

    def own() -> dict[int, float]:
        t = os.times()
        out = {os.getpid(): t.user + t.system}
        if tracker is not None:
            for pid in tracker.tagged_pids():
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    out[pid] = cpu
        return out

    b0, t0 = _busy_jiffies()
    o0 = own()
    time.sleep(seconds)
    b1, t1 = _busy_jiffies()
    o1 = own()
    cpus = os.cpu_count() or 1
    busy = cpus * (b1 - b0) / max(1, t1 - t0)
    mine = sum(max(0.0, o1[pid] - o0[pid]) for pid in o1.keys() & o0.keys()) / seconds
    return min(float(cpus), max(0.0, busy - mine))


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    import grpc
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
        "kernel": platform.release(),
    }


# -- sections ------------------------------------------------------------------------


@contextlib.contextmanager
def loopback_server(tracker: Tracker, work: Path, name: str) -> Iterator[tuple[int, int]]:
    """A raw loopback server process for the block; yields its port and pid."""
    work.mkdir(parents=True, exist_ok=True)
    port_file = work / "loopback.port"
    port_file.unlink(missing_ok=True)
    server = tracker.start(name, [sys.executable, "-m", "benchmarks.aggregation.loopback", "--serve", "--port-file", str(port_file)], cwd=REPO)
    try:
        wait_for(lambda: port_file.exists() or server.poll() is not None, 60, "the loopback server")
        if server.poll() is not None:
            raise RuntimeError(f"loopback server exited with {server.returncode}")
        yield int(port_file.read_text()), server.pid
    finally:
        tracker.stop_pids([server.pid])


def run_loopback(tracker: Tracker, work: Path, quick: bool) -> dict[str, Any]:
    with loopback_server(tracker, work, "loopback-server") as (port, _):
        return loopback.measure(port, mib=64 if quick else 256, streams=20, repeats=3)


def run_pair(
    tracker: Tracker, work: Path, case: Case, *, warmup: int, measured: int, client_procs: int, train_seconds: float = 0.0
) -> dict[str, Any]:
    """One configuration on our side and, round for round, the same traffic with raw
    gRPC (loopback.RawRun: each client pulls, then pushes, exactly the bytes of its
    prefix, the clients spread over the same processes). Rounds alternate (raw, ours;
    then ours, raw; ...), so that a change in the machine's speed during the section
    (1.5-2x within minutes here) falls on both sides alike. Returns {"raw": ..., "ours": ...}."""
    from benchmarks.aggregation import ours

    prefixes = ours.prefix_bytes(case)
    sizes = [prefixes[d] for _, d, r in case.tiers for _ in range(r)]
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        proc = tracker.start(f"raw-round-clients-{len(started)}", argv, cwd=REPO)
        started.append(proc)
        return proc

    try:
        with loopback_server(tracker, work / "raw", "raw-round-server") as (port, pid):
            n_procs = max(1, min(client_procs, len(sizes)))
            with (
                loopback.RawRun(
                    port, sizes, processes=n_procs, rounds=warmup + measured, warmup=warmup, work=work / "raw" / "sync",
                    start=start, server_cpu=lambda: cpu_seconds(pid), train_seconds=train_seconds,
                ) as raw,
                ours.OursRun(
                    case, tracker, work / "ours", warmup=warmup, measured=measured, client_procs=client_procs, train_seconds=train_seconds
                ) as run,
            ):
                raw.start()
                run.start()
                for r in range(warmup + measured):
                    for side in (raw, run) if r % 2 == 0 else (run, raw):
                        side.run_round()
                return {"raw": dict(raw.finish(), paired=True), "ours": run.finish()}
    finally:
        tracker.stop_pids([p.pid for p in started])


def guarded(results: dict[str, Any], key: str, fn: Callable[[], Any], log: Callable[[str], None], load: float) -> None:
    """Run one measurement; a failure is recorded (and shown) instead of ending the run."""
    t0 = time.monotonic()
    log(f"-- {key} (other load before it: {load:.2f} cores)")
    try:
        results[key] = fn()
    except Exception as exc:
        results[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        log(f"   FAILED: {type(exc).__name__}: {exc}")
    results[key]["section_seconds"] = round(time.monotonic() - t0, 1)
    log(f"   done in {results[key]['section_seconds']}s")


# -- report --------------------------------------------------------------------------


def _mib(n: float | None) -> str:
    return "–" if n is None else f"{n / MIB:,.1f}"


def _secs(r: dict[str, Any]) -> str:
    rounds = [x["seconds"] for x in r.get("rounds", [])]
    if not rounds:
        return "–"
    return f"{r['round_seconds_median']:.3f} ({min(rounds):.3f}–{max(rounds):.3f}, n={len(rounds)})"


def render(report: dict[str, Any]) -> str:
    res = report["results"]
    lb = res.get("loopback", {})
    ceiling = lb.get("ceiling_mib_s")
    lines = [
        "# Aggregator round overhead: FlexTrain vs Flower (loopback)",
        "",
        f"Machine: {report['machine']['cpus']} CPUs ({report['machine']['cpu_model']}), "
        f"{report['machine']['memory_bytes'] / 2**30:.0f} GiB; Python {report['machine']['python']}, "
        f"torch {report['machine']['torch']}, grpcio {report['machine']['grpcio']}; "
        f"Flower {report.get('flower_version', 'not run')}. Run {report['started']}, {report['wall_seconds']:.0f}s"
        f"{' (--quick)' if report['quick'] else ''}.",
        f"Rounds: {report['warmup']} warm-up + {report.get('pair_measured', report['measured'])} measured per FlexTrain "
        f"configuration, each round next to a raw round of the same traffic (alternating which goes first); "
        f"{report['warmup']} + {report['measured']} for Flower and for the 80-client case "
        "(latency: median, then min–max). "
        + (f"Every client sleeps {report['train_seconds']:g} s between its pull and its push (--train-seconds: "
           "a stand-in for local training), which the rounds include."
           if report.get("train_seconds") else
           "Clients do no training: transport, serialisation, orchestration and merging only."),
        "",
    ]
    if lb and "error" not in lb:
        lines += [
            "## Raw loopback gRPC throughput (the ceiling, same run)",
            "",
            "| direction | 1 stream (MiB/s) | 20 streams (MiB/s) |",
            "|---|---|---|",
            f"| server → client (server-streaming, like PullModel) | {lb['download_1_stream_mib_s']:,.0f} | {lb['download_20_streams_mib_s']:,.0f} |",
            f"| client → server (client-streaming, like PushUpdate) | {lb['upload_1_stream_mib_s']:,.0f} | {lb['upload_20_streams_mib_s']:,.0f} |",
            "",
            f"Best of the four: **{ceiling:,.0f} MiB/s** (2 MiB chunks, raw bytes, grpc.aio server and sync "
            "client in separate processes)."
            + (f" Measured again at the end of the run: {res['loopback_end']['ceiling_mib_s']:,.0f} MiB/s." if "ceiling_mib_s" in res.get("loopback_end", {}) else ""),
            "",
        ]
    elif lb:
        lines += [f"Raw loopback measurement failed: {lb['error']}", ""]
    raws = [(k, v) for k, v in res.items() if k.startswith("raw/")]
    if raws:
        lines += [
            "Raw loopback for exactly each configuration's round traffic (the ceiling the throughput target is "
            "checked against): every client pulls the bytes of its prefix, then pushes as many back, all clients "
            "at once, as threads spread over the same processes as the fake trainers; raw bytes, no framing, no "
            "checks, no merge. Each client sends its own distinct memory, as a trainer sends its own tensors "
            "(the server sends one shared copy, as the aggregator does). Each raw round runs right before or "
            "after the FlexTrain round it is compared with (alternating), after a warm-up round.",
            "",
            "| configuration | clients (processes) | MiB / round | raw round, s: best (median) | raw MiB/s: best (median) | CPU s / round: server; clients |",
            "|---|---|---|---|---|---|",
        ]
        for key, r in raws:
            label = report["cases"].get(key.split("/", 1)[1], {}).get("label", key)
            if "error" in r:
                lines.append(f"| {label} | FAILED: {r['error'][:160]} | | | | |")
                continue
            cpu = "; ".join(f"{r[k]:.2f}" if r.get(k) is not None else "–" for k in ("server_cpu_seconds_per_round", "clients_cpu_seconds_per_round"))
            lines.append(
                f"| {label} | {r['clients']} ({r['processes']}) | {_mib(r['bytes_per_round'])} | "
                f"{r['round_seconds_best']:.3f} ({r['round_seconds_median']:.3f}) | {r['mib_s_best']:,.0f} ({r['mib_s_median']:,.0f}) | {cpu} |"
            )
        lines.append("")

    lines += [
        "## Per-round results (20 clients; the last rows: one client alone, then 80 clients)",
        "",
        "| configuration | system | round latency, s | bytes on the wire / round (MiB) | share of full-model FedAvg | throughput (MiB/s) | share of raw loopback | CPU s / round: server; clients | server peak RSS (MiB) | above idle (MiB; × model) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [
        ("resnet56-table3", "ours/resnet56-table3", "FlexTrain aggregator"),
        ("resnet56-table3", "ours/resnet56-full", "FlexTrain aggregator, all full depth"),
        ("resnet56-table3", "flower-legacy/resnet56", "Flower legacy gRPC (start_server)"),
        ("resnet56-table3", "flower-deployment/resnet56", "Flower Deployment Engine"),
        ("large", "ours/large", "FlexTrain aggregator"),
        ("large", "flower-legacy/large", "Flower legacy gRPC (start_server)"),
        ("large", "flower-deployment/large", "Flower Deployment Engine"),
        ("large-single", "ours/large-single", "FlexTrain aggregator, one client"),
        ("large-80", "ours/large-80", "FlexTrain aggregator, 80 clients"),
    ]
    for case_key, key, system in order:
        r = res.get(key)
        if r is None:
            continue
        label = report["cases"][case_key]["label"] if case_key.startswith("large") else "ResNet-56/100 classes (Table 3 mix for FlexTrain; Flower: full model)"
        if key == "ours/resnet56-full":
            label = "ResNet-56/100 classes, FlexTrain with all 20 at full depth (FedAvg-equivalent)"
        model = report["cases"][case_key]["model_bytes"]
        label = f"{label}; model {model / 1e6:.1f} MB"
        if "error" in r:
            lines.append(f"| {label} | {system} | FAILED: {r['error'][:160]} | | | | | | | |")
            continue
        same = raw_share(res, key) if key.startswith("ours/") else None
        shares = ([f"{same.paired:.0%} paired rounds"] if same and same.paired is not None else [])
        shares += ([f"{same.best:.0%} of the best raw round"] if same else [])
        shares += [f"{r['throughput_mib_s'] / ceiling:.0%} of the best one-way figure"] if ceiling else []
        share_lb = "; ".join(shares) or "–"
        above = r["server_peak_rss_bytes"] - r.get("server_idle_rss_bytes", 0)
        cpu = "; ".join(f"{r[k]:.2f}" if r.get(k) is not None else "–" for k in ("server_cpu_seconds_per_round", "clients_cpu_seconds_per_round"))
        lines.append(
            f"| {label} | {system} | {_secs(r)} | {_mib(r['bytes_per_round'])} | {r['bytes_share_of_fedavg']:.1%} | "
            f"{r['throughput_mib_s']:,.0f} | {share_lb} | {cpu} | {_mib(r['server_peak_rss_bytes'])} | {_mib(above)}; {above / model:.1f}× |"
        )
    lines += [
        "",
        "Bytes on the wire = tensor payload pulled + pushed by all clients in a round (FlexTrain: "
        "counted by the clients; Flower: model bytes × clients × 2, its framing not counted). "
        "Throughput = those bytes / median round latency. Server peak RSS = VmHWM of the "
        "aggregator process (FlexTrain), of the start_server() process (Flower legacy), of "
        "SuperLink + ServerApp (Deployment Engine, sum of the two peaks); idle = RSS once the "
        "server is up with its model loaded, before clients connect (FlexTrain's idle includes "
        "importing torch, about 0.6 GiB with the CUDA wheel). CPU s / round: CPU seconds of the "
        "server process(es), then of all client-side processes, per round (FlexTrain and raw: the measured "
        "rounds, from their start to their last push; Flower: the whole run per round, warm-up included; "
        "Deployment Engine clients = SuperNodes + SuperExecs + ClientApps); all share the 2 cores. "
        "FlexTrain's rounds start at a time every client waits for, as the raw rounds do.",
        "",
    ]
    waits = [(k, r["time_to_model_seconds"]) for k, r in res.items() if k.startswith("ours/") and "time_to_model_seconds" in r]
    if waits:
        lines += [
            "Time to model (FlexTrain): from a round's start until a client holds its model, for the first, the "
            "median and the last client (medians over the measured rounds). Pulls are served in the order they "
            "began, a few at a time, so the first clients can train while the others still pull:",
            "",
            *(f"- {report['cases'][k.split('/', 1)[1]]['label']}: {w[0]:.3f} s / {w[1]:.3f} s / {w[2]:.3f} s" for k, w in waits),
            "",
        ]
    lines += render_targets(report)
    lines += render_notes(report)
    return "\n".join(lines) + "\n"


def _ok(flag: bool | None) -> str:
    return "–" if flag is None else ("**met**" if flag else "**not met**")


def _above_idle(result: dict[str, Any]) -> int:
    return result["server_peak_rss_bytes"] - result["server_idle_rss_bytes"]


def _memory_target(res: dict[str, Any], ours_key: str, name: str, flower_mem: str) -> str:
    """The memory row: above idle as a multiple of the model and, the verdict, its
    growth per byte of model from BASE_MEMORY_CASE (which itself gets no verdict: its
    3.5 MB model is smaller than the fixed part)."""
    ours = res[ours_key]
    model = ours["model_bytes"]
    above = _above_idle(ours)
    measured = (
        f"peak {_mib(ours['server_peak_rss_bytes'])} MiB, {_mib(above)} MiB above idle = "
        f"{above / model:.1f}× the {model / 1e6:.1f} MB model"
    )
    base = res.get(BASE_MEMORY_CASE, {})
    if ours_key == BASE_MEMORY_CASE:
        measured += " (mostly the fixed part: gRPC, threads, allocator)"
        verdict = "–"
    elif "server_peak_rss_bytes" in base and base["model_bytes"] < model:
        slope = (above - _above_idle(base)) / (model - base["model_bytes"])
        measured += (
            f"; growth from the {base['model_bytes'] / 1e6:.1f} MB model's {_mib(_above_idle(base))} MiB: "
            f"{slope:.1f} bytes per byte of model"
        )
        verdict = _ok(slope <= TARGET_MEMORY_MULTIPLE)
    else:
        verdict = _ok(above / model <= TARGET_MEMORY_MULTIPLE)
    return (
        f"| aggregator memory within a small multiple (≤ {TARGET_MEMORY_MULTIPLE:g}×, our reading) of the model ({name}) | "
        f"{measured}{'; ' + flower_mem if flower_mem else ''} | {verdict} |"
    )


def render_targets(report: dict[str, Any]) -> list[str]:
    res = report["results"]
    ceiling = res.get("loopback", {}).get("ceiling_mib_s")
    lines = ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    for case_key, ours_key in (
        ("resnet56-table3", "ours/resnet56-table3"), ("large", "ours/large")
    ):
        if case_key not in report["cases"]:
            continue
        ours = res.get(ours_key, {})
        flower_key = "large" if case_key.startswith("large") else "resnet56"
        flowers = {p: res.get(f"flower-{p}/{flower_key}", {}) for p in ("legacy", "deployment")}
        valid = {p: r for p, r in flowers.items() if "round_seconds_median" in r}
        name = report["cases"][case_key]["label"]
        if "round_seconds_median" in ours and valid:
            fastest = min(valid, key=lambda p: valid[p]["round_seconds_median"])
            ratio = ours["round_seconds_median"] / valid[fastest]["round_seconds_median"]
            lines.append(
                f"| round overhead ≤ {TARGET_OVERHEAD_RATIO:.0%} of Flower's fastest path ({name}) | "
                f"{ours['round_seconds_median']:.3f}s vs {valid[fastest]['round_seconds_median']:.3f}s (Flower {fastest}) = {ratio:.2f}× "
                + "; ".join(f"vs {p}: {ours['round_seconds_median'] / r['round_seconds_median']:.3f}×" for p, r in valid.items())
                + f" | {_ok(ratio <= TARGET_OVERHEAD_RATIO)} |"
            )
        lines += _throughput_target(res, ours_key, name, ceiling)
        if "server_peak_rss_bytes" in ours:
            flower_mem = "; ".join(f"Flower {p}: {_mib(r['server_peak_rss_bytes'])} MiB peak" for p, r in valid.items())
            lines.append(_memory_target(res, ours_key, name, flower_mem))
    if "large-single" in report["cases"]:
        lines += _throughput_target(res, "ours/large-single", report["cases"]["large-single"]["label"], ceiling)
    if "server_peak_rss_bytes" in res.get("ours/large-80", {}):
        lines.append(_memory_target(res, "ours/large-80", report["cases"]["large-80"]["label"], ""))
    ours = res.get("ours/resnet56-table3", {})
    if "bytes_share_of_fedavg" in ours:
        share = ours["bytes_share_of_fedavg"]
        lines.append(
            f"| bytes per round ≈ {TARGET_BYTES_SHARE:.1%} of full-model FedAvg (Table 3 mix) | "
            f"{_mib(ours['bytes_per_round'])} of {_mib(ours['fedavg_bytes_per_round'])} MiB = {share:.2%} "
            f"(expected from the prefix sizes: {ours['bytes_per_round_expected'] / ours['fedavg_bytes_per_round']:.2%}) | "
            f"{_ok(abs(share - TARGET_BYTES_SHARE) <= 0.005)} |"
        )
    return [*lines, ""]


def _throughput_target(res: dict[str, Any], ours_key: str, name: str, ceiling: float | None) -> list[str]:
    ours = res.get(ours_key, {})
    same = raw_share(res, ours_key)
    if "throughput_mib_s" not in ours or same is None:
        return []
    raw = same.raw
    verdict = same.paired if same.paired is not None else same.best
    paired = (
        f"**{same.paired:.0%}**: median over {len(ours['rounds'])} rounds of raw round / our round, run back to back; "
        if same.paired is not None else ""
    )
    best = f"; of the best one-way figure ({ceiling:,.0f} MiB/s): {ours['throughput_mib_s'] / ceiling:.0%}" if ceiling else ""
    return [
        f"| aggregator throughput ≥ {TARGET_THROUGHPUT_SHARE:.0%} of raw loopback ({name}) | "
        f"{paired}{ours['throughput_mib_s']:,.0f} MiB/s (median round {ours['round_seconds_median']:.3f} s) vs "
        f"{raw['mib_s_median']:,.0f} MiB/s raw for the same traffic (median {raw['round_seconds_median']:.3f} s); "
        f"against the best raw round ({raw['round_seconds_best']:.3f} s): {same.best:.0%}{best} | "
        f"{_ok(verdict >= TARGET_THROUGHPUT_SHARE)} |"
    ]


def render_notes(report: dict[str, Any]) -> list[str]:
    res = report["results"]
    notes = ["## How each side ran", ""]
    ours = res.get("ours/resnet56-table3", {})
    procs = ours.get("client_processes", report["client_procs"])
    notes.append(
        f"- FlexTrain: `python -m flextrain aggregator` (one process, JSON logs) with a JobPlan built from a "
        f"FlexTrainJob (dataset `synthetic`, numClasses set; evaluateEveryRounds beyond the job, one round more "
        f"than the clients run, so no evaluation happens); 20 fake trainers (`AggregatorClient`: join, pull, push "
        f"the pulled tensors unchanged) as threads in {procs} processes. Latency of round r = last push answer of r "
        f"(sent after the merge) − the start time the benchmark gave round r, which every client waits for before "
        f"it pulls (as the raw rounds' clients do); connections are closed only after the last measured round."
    )
    notes.append(
        f"- Flower legacy: `flwr.server.start_server` (deprecated, `flwr.compat`) with FedAvg (fraction_fit 1, "
        f"min clients 20, fraction_evaluate 0) in one process; 20 `start_client` NumPyClients returning the "
        f"received parameters from fit(), as threads in {procs} processes. Latency = configure_fit start → "
        "aggregate_fit end."
    )
    notes.append(
        "- Flower Deployment Engine: `flower-superlink --insecure` + 20 `flower-supernode --insecure` (subprocess "
        "isolation: each SuperNode runs a SuperExec that starts one `flwr-clientapp` process per message), the "
        "app in benchmarks/aggregation/flower_app (message-API FedAvg, fraction_evaluate 0; the ClientApp returns "
        "the received ArrayRecord) submitted with `flwr run`. Both models run as phases of one Flower run: the "
        "first round of the first phase is the warm-up (app install on every SuperNode); later phases reuse the "
        "warm federation. Latency = configure_train start → aggregate_train end."
    )
    dep = {k: v for k, v in res.items() if k.startswith("flower-deployment/") and "cpu_seconds_by_process" in v}
    for key, r in dep.items():
        cpu = ", ".join(f"{k} {v:.0f}s" for k, v in sorted(r["cpu_seconds_by_process"].items(), key=lambda kv: -kv[1]))
        notes.append(f"  - CPU seconds during `{key}` (all its rounds): {cpu}.")
    loads = report.get("foreign_load", [])
    if loads:
        notes.append(
            f"- Other load on the machine between sections (cores busy with processes not ours): "
            f"max {max(loads):.2f}, median {statistics.median(loads):.2f}. Values above ~0.1 mean another job "
            "shared the CPUs and the timings are pessimistic for everyone measured at that moment."
        )
    skipped = report.get("skipped", [])
    if skipped:
        notes.append("- Skipped: " + "; ".join(skipped) + ".")
    failed = [f"`{k}`: {v['error']}" for k, v in res.items() if isinstance(v, dict) and "error" in v]
    if failed:
        notes.append("- Failures (tracebacks in aggregation.json): " + "; ".join(failed))
    return [*notes, ""]


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.aggregation", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: ResNet-56 only, 2 measured rounds, no Deployment Engine")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report directory (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument(
        "--only",
        choices=["all", "flextrain", "flower", "flower-legacy", "flower-deployment"],
        default="all",
        help="measure one side (or one Flower path) only; the loopback ceiling always runs",
    )
    p.add_argument("--rounds", type=int, default=None, help="measured rounds of Flower and of FlexTrain's 80-client case (default 3, --quick 2)")
    p.add_argument("--pair-rounds", type=int, default=None,
                   help="measured rounds of each FlexTrain configuration and its raw rounds, alternating (default 6, --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds before the measured ones")
    p.add_argument("--client-procs", type=int, default=4, help="processes the 20 clients are spread over (threads inside)")
    p.add_argument("--large-layers", type=int, default=20, choices=[8, 20, 32, 44, 56, 110])
    p.add_argument("--large-classes", type=int, default=200_000, help="head size of the large model (default: ResNet-20 + 200,000 classes = 53 MB)")
    p.add_argument("--flower-python", type=Path, default=DEFAULT_FLOWER_PYTHON, help="python of a virtualenv with flwr (default .venv-flower)")
    p.add_argument("--no-deployment", action="store_true", help="skip Flower's Deployment Engine (the slowest part)")
    p.add_argument("--train-seconds", type=float, default=0.0,
                   help="FlexTrain's clients and their raw rounds' clients sleep this long between pull and push "
                        "(a stand-in for local training that uses no CPU; needs --only flextrain)")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.train_seconds < 0:
        p.error("--train-seconds must be >= 0")
    if args.train_seconds and args.only != "flextrain":
        p.error("--train-seconds needs --only flextrain (Flower's clients do not simulate training)")
    if args.pair_rounds is None:
        args.pair_rounds = 2 if args.quick else 6
    if args.rounds < 1 or args.pair_rounds < 1 or args.warmup < 1:
        p.error("--rounds, --pair-rounds and --warmup must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    out: Path = args.out.resolve()
    work = out / "work"
    logs = out / "logs"
    for d in (work, logs):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)

    all_cases = cases(args)
    run_cases = ["resnet56-table3", "resnet56-full", "large", "large-single"] if not args.quick else ["resnet56-table3"]
    from benchmarks.aggregation import flower, ours

    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "quick": args.quick,
        "warmup": args.warmup,
        "measured": args.rounds,
        "pair_measured": args.pair_rounds,
        "train_seconds": args.train_seconds,
        "client_procs": args.client_procs,
        "machine": machine(),
        "cases": {},
        "results": {},
        "skipped": [],
        "foreign_load": [],
    }
    memory_cases = [] if args.quick else ["large-80"]
    for key in {"resnet56-table3", *run_cases, *memory_cases}:
        case = all_cases[key]
        report["cases"][key] = {"label": case.label, "layers": case.layers, "num_classes": case.num_classes,
                                "tiers": case.tiers, "model_bytes": ours.model_bytes(case)}
    if "large" in run_cases and report["cases"]["large"]["model_bytes"] < 50e6:
        log(f"warning: the large model is only {report['cases']['large']['model_bytes'] / 1e6:.1f} MB (< 50 MB)")
    results: dict[str, Any] = report["results"]
    do_ours = args.only in ("all", "flextrain")
    do_flower = args.only in ("all", "flower", "flower-legacy", "flower-deployment")
    do_legacy = args.only != "flower-deployment"
    do_deployment = args.only != "flower-legacy"
    flower_python = args.flower_python
    if do_flower:
        try:
            report["flower_version"] = flower.flower_version(flower_python)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            do_flower = False
            report["skipped"].append(f"Flower ({exc}); run benchmarks/aggregation/setup_flower.sh")
            log(f"Flower unavailable: {exc}")

    tracker = Tracker(logs)
    try:
        def section(key: str, fn: Callable[[], Any]) -> None:
            tracker.stop_all()  # nothing of an earlier section may linger (e.g. Flower's detached children)
            load = foreign_load(tracker, 1.0)
            report["foreign_load"].append(round(load, 3))
            guarded(results, key, fn, log, load)

        section("loopback", lambda: run_loopback(tracker, work / "loopback", args.quick))
        if do_ours:
            for key in run_cases:  # each with the same traffic's raw rounds, alternating: its ceiling
                section(f"pair/{key}", lambda key=key: run_pair(
                    tracker, work / f"pair-{key}", all_cases[key], warmup=args.warmup, measured=args.pair_rounds,
                    client_procs=args.client_procs, train_seconds=args.train_seconds))
                pair = results.pop(f"pair/{key}")
                for side in ("raw", "ours"):
                    results[f"{side}/{key}"] = dict(pair[side], section_seconds=pair["section_seconds"]) if side in pair else dict(pair)
            for key in memory_cases:
                section(f"ours/{key}", lambda key=key: ours.run_case(
                    all_cases[key], tracker, work / f"ours-{key}", warmup=args.warmup, measured=args.rounds,
                    client_procs=args.client_procs, train_seconds=args.train_seconds))
        if do_flower:
            flower_cases = [("resnet56", all_cases["resnet56-full"])] + ([("large", all_cases["large"])] if "large" in run_cases else [])
            models = {}
            for label, case in flower_cases:
                path = work / f"model-{label}.npz"
                models[label] = (path, flower.save_model(ours.model_arrays(case), path))
            for label, _case in flower_cases if do_legacy else []:
                path, nbytes = models[label]
                section(f"flower-legacy/{label}", lambda label=label, path=path, nbytes=nbytes: flower.run_legacy(
                    flower_python, path, nbytes, tracker, work / "flower-legacy", label=label, clients=20,
                    warmup=args.warmup, measured=args.rounds, client_procs=args.client_procs))
            if not do_deployment:
                pass
            elif args.quick or args.no_deployment:
                report["skipped"].append("Flower Deployment Engine (" + ("--quick" if args.quick else "--no-deployment") + ")")
            else:
                phases = [
                    {"label": label, "model": models[label][0], "model_bytes": models[label][1],
                     "rounds": (args.warmup if i == 0 else 0) + args.rounds, "warmup": args.warmup if i == 0 else 0}
                    for i, (label, _case) in enumerate(flower_cases)
                ]
                section("flower-deployment", lambda: run_deployment(flower_python, tracker, work / "flower-deployment", phases, results, log))
                for label, _ in flower_cases:
                    results.setdefault(f"flower-deployment/{label}", {"error": results["flower-deployment"].get("error", "not run")})
        section("loopback_end", lambda: run_loopback(tracker, work / "loopback-end", True))
    finally:
        tracker.close()
    report["wall_seconds"] = time.time() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "aggregation.json").write_text(json.dumps(report, indent=1, default=str))
    table = render(report)
    (out / "aggregation.md").write_text(table)
    print(table)
    log(f"wrote {out / 'aggregation.md'} and {out / 'aggregation.json'}")
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


def run_deployment(python: Path, tracker: Tracker, work: Path, phases: list[dict[str, Any]], results: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.aggregation import flower

    dep = flower.Deployment(python, tracker, work, clients=20)
    try:
        dep.start()
        waited = dep.wait_ready(300)
        log(f"   20 SuperNodes registered after {waited:.0f}s")
        budget = 300 + sum(p["rounds"] * (150 + 100 * p["model_bytes"] * 20 / 1e9) for p in phases)
        out = dep.run(phases, budget=budget)
        for label, r in out.items():
            results[f"flower-deployment/{label}"] = r
        return {"supernodes_ready_seconds": waited}
    finally:
        dep.stop()
