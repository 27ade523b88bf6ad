"""Round overhead of the FlexTrain aggregator against Flower, on loopback.

    python -m benchmarks.aggregation [--quick] [--scale] [--out DIR] [--only ...]

Measures, in one run on this machine: the raw loopback gRPC throughput (the ceiling),
our aggregator with 20 fake trainers (no training, a checkpoint every round as the
product writes by default) on ResNet-56 with the paper's Table 3 tier mix, with all 20
at full depth and on a model of at least 50 MB, and Flower's FedAvg of the same models
with 20 clients in both of its networked paths (legacy `start_server` / `start_client`,
whose rounds alternate with ours, and the Deployment Engine). `--scale` adds one
aggregator with up to 1,000 clients. Writes `aggregation.md` (the table and the
verdicts, see report.py) and `aggregation.json` (raw numbers) to --out (default
benchmarks/out/aggregation/).

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
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from benchmarks.aggregation import loopback
from benchmarks.aggregation.ours import TABLE3_TIERS, Case, table3_mix
from benchmarks.aggregation.procs import Tracker, cpu_seconds, wait_for
from benchmarks.aggregation.report import render

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "out" / "aggregation"
DEFAULT_FLOWER_PYTHON = REPO / ".venv-flower" / "bin" / "python"
#: Client counts of the scale case (--scale-clients), each a multiple of 10.
DEFAULT_SCALE_CLIENTS = (100, 250, 500, 1000)


def resnet_blocks(layers: int) -> int:
    return 3 * ((layers - 2) // 6)


def cases(args: argparse.Namespace) -> dict[str, Case]:
    large_blocks = resnet_blocks(args.large_layers)
    large_name = f"ResNet-{args.large_layers}/{args.large_classes:,} classes"
    large = Case(
        "large",
        f"{large_name}, all 20 at full depth",
        args.large_layers,
        args.large_classes,
        ((f"k{large_blocks}", large_blocks, 20),),
    )
    out = {
        "resnet56-table3": Case(
            "resnet56-table3", "ResNet-56/100 classes, Table 3 mix", 56, 100, TABLE3_TIERS
        ),
        "resnet56-full": Case(
            "resnet56-full",
            "ResNet-56/100 classes, all 20 at full depth",
            56,
            100,
            (("k27", 27, 20),),
        ),
        "large": large,
        # The same without checkpoints: what writing one every round costs.
        "large-nockpt": replace(
            large,
            key="large-nockpt",
            label=f"{large_name}, all 20 at full depth, no checkpoints",
            checkpoint=False,
        ),
        # One client, nobody else on the cores: the protocol's own throughput (framing,
        # checks, merge) against the single-stream loopback figures.
        "large-single": replace(
            large,
            key="large-single",
            label=f"{large_name}, one client at full depth",
            tiers=((f"k{large_blocks}", large_blocks, 1),),
        ),
        # Four times the clients: memory must not grow with them (no raw round: only
        # the aggregator's memory is checked here).
        "large-80": replace(
            large,
            key="large-80",
            label=f"{large_name}, 80 clients at full depth",
            tiers=((f"k{large_blocks}", large_blocks, 80),),
        ),
    }
    # The same over TLS (--tls): what the default transport of the operator's jobs costs.
    for key in ("resnet56-full", "large"):
        plain = out[key]
        out[f"{key}-tls"] = replace(plain, key=f"{key}-tls", label=f"{plain.label}, TLS", tls=True)
    return out


def scale_case(clients: int) -> Case:
    return Case(
        f"scale-{clients}",
        f"ResNet-56/100 classes, Table 3 mix, {clients:,} clients",
        56,
        100,
        table3_mix(clients),
    )


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
    server = tracker.start(
        name,
        [
            sys.executable,
            "-m",
            "benchmarks.aggregation.loopback",
            "--serve",
            "--port-file",
            str(port_file),
        ],
        cwd=REPO,
    )
    try:
        wait_for(lambda: port_file.exists() or server.poll() is not None, 60, "the loopback server")
        if server.poll() is not None:
            raise RuntimeError(f"loopback server exited with {server.returncode}")
        yield int(port_file.read_text()), server.pid
    finally:
        tracker.stop_pids([server.pid])


def run_loopback(tracker: Tracker, work: Path, mib: int) -> dict[str, Any]:
    with loopback_server(tracker, work, "loopback-server") as (port, _):
        return loopback.measure(port, mib=mib, streams=20, repeats=3)


class Side(Protocol):
    """One system in an interleaved section (ours.OursRun, loopback.RawRun,
    flower.LegacyRun): started, then driven round by round, then summed up."""

    def start(self) -> None: ...

    def run_round(self) -> None: ...

    def finish(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _failure(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def interleave(
    name: str, sides: dict[str, Side], rounds: int, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Start every side, then run round r of each in turn, the order rotating by one
    from round to round (so that each side goes first, second, ... equally often and
    a change in the machine's speed falls on all alike); returns each side's numbers.
    A side that fails is recorded as failed and left out from then on."""
    out: dict[str, dict[str, Any]] = {}
    names = list(sides)
    for key in names:
        try:
            sides[key].start()
        except Exception as exc:
            out[key] = _failure(exc)
            log(f"   {key} FAILED to start: {exc}")
    t0 = time.monotonic()
    for r in range(rounds):
        k = r % len(names)
        for key in names[k:] + names[:k]:
            if key in out:
                continue
            try:
                sides[key].run_round()
            except Exception as exc:
                out[key] = _failure(exc)
                log(f"   {key} FAILED in round {r + 1}: {exc}")
                sides[key].close()
        log(f"   round {r + 1}/{rounds} of each ({time.monotonic() - t0:.0f}s)")
    for key in names:
        if key in out:
            continue
        try:
            out[key] = dict(sides[key].finish(), section=name)
        except Exception as exc:
            out[key] = _failure(exc)
            log(f"   {key} FAILED to finish: {exc}")
    return out


def run_section(
    name: str,
    tracker: Tracker,
    work: Path,
    ours_cases: list[Case],
    *,
    raw_cases: set[str],
    flower_legacy: tuple[str, Path, int] | None,
    flower_python: Path,
    warmup: int,
    measured: int,
    client_procs: int,
    train_seconds: float,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """One section: each case on our side (and, for those in `raw_cases`, the raw
    rounds of the same traffic: loopback.RawRun, each client pulling and then pushing
    exactly the bytes of its prefix, the clients spread over the same processes) and
    Flower legacy on `flower_legacy` = (label, model .npz, model bytes), all up at once,
    their rounds interleaved. Returns each side's numbers under its result key."""
    from benchmarks.aggregation import flower, ours

    rounds = warmup + measured
    with contextlib.ExitStack() as stack:
        sides: dict[str, Side] = {}
        raw_port = raw_pid = 0
        if raw_cases & {c.key for c in ours_cases}:
            raw_port, raw_pid = stack.enter_context(
                loopback_server(tracker, work / "raw", f"raw-{name}-server")
            )
        for case in ours_cases:
            if case.key in raw_cases:
                prefixes = ours.prefix_bytes(case)
                sizes = [prefixes[d] for _, d, r in case.tiers for _ in range(r)]
                counter = iter(range(10**6))

                def start(
                    argv: list[str], key: str = case.key, counter: Iterator[int] = counter
                ) -> Any:
                    return tracker.start(f"raw-{key}-clients-{next(counter)}", argv, cwd=REPO)

                sides[f"raw/{case.key}"] = stack.enter_context(
                    loopback.RawRun(
                        raw_port,
                        sizes,
                        processes=max(1, min(client_procs, len(sizes))),
                        rounds=rounds,
                        warmup=warmup,
                        work=work / f"raw-{case.key}",
                        start=start,
                        server_cpu=lambda: cpu_seconds(raw_pid),
                        train_seconds=train_seconds,
                    )
                )
            sides[f"ours/{case.key}"] = stack.enter_context(
                ours.OursRun(
                    case,
                    tracker,
                    work / f"ours-{case.key}",
                    warmup=warmup,
                    measured=measured,
                    client_procs=client_procs,
                    train_seconds=train_seconds,
                )
            )
        if flower_legacy is not None:
            label, model, nbytes = flower_legacy
            sides[f"flower-legacy/{label}"] = stack.enter_context(
                flower.LegacyRun(
                    flower_python,
                    model,
                    nbytes,
                    tracker,
                    work / "flower-legacy",
                    label=label,
                    clients=20,
                    warmup=warmup,
                    measured=measured,
                    client_procs=client_procs,
                )
            )
        out = interleave(name, sides, rounds, log)
    for key, result in out.items():
        if key.startswith("raw/") and "error" not in result:
            result["paired"] = True  # its rounds ran next to ours (raw_share pairs them)
    return out


def run_scale_count(
    tracker: Tracker,
    work: Path,
    clients: int,
    *,
    warmup: int,
    measured: int,
    client_procs: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One aggregator with `clients` fake trainers (the Table 3 mix) in `client_procs`
    processes: its rounds, one after the other."""
    from benchmarks.aggregation import ours

    with ours.OursRun(
        scale_case(clients),
        tracker,
        work,
        warmup=warmup,
        measured=measured,
        client_procs=client_procs,
    ) as run:
        t0 = time.monotonic()
        run.start()
        log(
            f"   {clients} clients in {run.n_procs} processes: aggregator up ({time.monotonic() - t0:.0f}s)"
        )
        for r in range(warmup + measured):
            run.run_round()
            log(
                f"   round {r + 1}/{warmup + measured} ({'warm-up, joins included' if r < warmup else 'measured'}) "
                f"done ({time.monotonic() - t0:.0f}s)"
            )
        return run.finish()


def imports_rss() -> dict[str, int] | None:
    """Memory of a process that has only imported what the aggregator imports before it
    loads its job (torch, grpc, the service): the part of its idle memory that is the
    libraries', whatever the model. VmRSS, and its anonymous and file-backed parts
    (RssAnon, RssFile), in bytes."""
    code = (
        "import json, torch, grpc, flextrain.aggregator.service, flextrain.aggregator.servicer\n"
        "from pathlib import Path\n"
        "print(json.dumps({k: int(v.split()[0]) * 1024 for k, _, v in "
        "(l.partition(':') for l in Path('/proc/self/status').read_text().splitlines()) "
        "if k in ('VmRSS', 'RssAnon', 'RssFile')}))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            check=True,
        )
        return {str(k): int(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def guarded(
    results: dict[str, Any],
    key: str,
    fn: Callable[[], Any],
    log: Callable[[str], None],
    load: float,
) -> None:
    """Run one measurement; a failure is recorded (and shown) instead of ending the run."""
    t0 = time.monotonic()
    log(f"-- {key} (other load before it: {load:.2f} cores)")
    try:
        results[key] = fn()
    except Exception as exc:
        results[key] = _failure(exc)
        log(f"   FAILED: {type(exc).__name__}: {exc}")
    results[key]["section_seconds"] = round(time.monotonic() - t0, 1)
    log(f"   done in {results[key]['section_seconds']}s")


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.aggregation", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: ResNet-56 only, 2 measured rounds, no Deployment Engine (with --scale: 40 and 100 clients)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"report directory (default {DEFAULT_OUT.relative_to(REPO)})",
    )
    p.add_argument(
        "--only",
        choices=["all", "flextrain", "flower", "flower-legacy", "flower-deployment", "scale"],
        default="all",
        help="measure one side (or one Flower path, or only the scale case) only; the loopback ceiling always runs",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="measured rounds of every interleaved configuration (FlexTrain's, their raw rounds, Flower "
        "legacy) and of the 80-client case (default 6, --quick 2)",
    )
    p.add_argument(
        "--deployment-rounds",
        type=int,
        default=3,
        help="measured rounds of each model in Flower's Deployment Engine (default 3: its rounds take 1-2 min)",
    )
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds before the measured ones")
    p.add_argument(
        "--client-procs",
        type=int,
        default=4,
        help="processes the 20 clients are spread over (threads inside)",
    )
    p.add_argument("--large-layers", type=int, default=20, choices=[8, 20, 32, 44, 56, 110])
    p.add_argument(
        "--large-classes",
        type=int,
        default=200_000,
        help="head size of the large model (default: ResNet-20 + 200,000 classes = 53 MB)",
    )
    p.add_argument(
        "--flower-python",
        type=Path,
        default=DEFAULT_FLOWER_PYTHON,
        help="python of a virtualenv with flwr (default .venv-flower)",
    )
    p.add_argument(
        "--no-deployment",
        action="store_true",
        help="skip Flower's Deployment Engine (the slowest part)",
    )
    p.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="FlexTrain's clients and their raw rounds' clients sleep this long between pull and push "
        "(a stand-in for local training that uses no CPU; needs --only flextrain)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="measure only what TLS costs: ResNet-56 (all 20 at full depth) and the large model, each with "
        "and without TLS, their rounds interleaved (no Flower, no raw rounds)",
    )
    p.add_argument(
        "--scale",
        action="store_true",
        help="add the scale case: one aggregator, the ResNet-56 Table 3 mix, --scale-clients clients",
    )
    p.add_argument(
        "--scale-clients",
        default=None,
        help="comma-separated client counts of the scale case, multiples of 10 (default "
        + ",".join(map(str, DEFAULT_SCALE_CLIENTS))
        + "; --quick 40,100)",
    )
    p.add_argument(
        "--scale-procs",
        type=int,
        default=8,
        help="processes the scale case's clients are spread over",
    )
    p.add_argument(
        "--scale-rounds",
        type=int,
        default=None,
        help="measured rounds of each scale count (default 3, --quick 1)",
    )
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 6
    if args.scale_rounds is None:
        args.scale_rounds = 1 if args.quick else 3
    if args.only == "scale":
        args.scale = True
    if args.tls and (args.only != "all" or args.scale or args.train_seconds):
        p.error("--tls runs its own sections: leave out --only, --scale and --train-seconds")
    if args.train_seconds < 0:
        p.error("--train-seconds must be >= 0")
    if args.train_seconds and args.only != "flextrain":
        p.error(
            "--train-seconds needs --only flextrain (Flower's clients do not simulate training)"
        )
    if (
        min(args.rounds, args.deployment_rounds, args.warmup, args.scale_rounds, args.scale_procs)
        < 1
    ):
        p.error(
            "--rounds, --deployment-rounds, --warmup, --scale-rounds and --scale-procs must be >= 1"
        )
    try:
        args.scale_clients = (
            tuple(int(x) for x in args.scale_clients.split(","))
            if args.scale_clients
            else (40, 100)
            if args.quick
            else DEFAULT_SCALE_CLIENTS
        )
        for n in args.scale_clients:
            table3_mix(n)
    except ValueError as exc:
        p.error(f"--scale-clients: {exc}")
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
    from benchmarks.aggregation import flower, ours

    do_ours = args.only in ("all", "flextrain")
    do_flower = args.only in ("all", "flower", "flower-legacy", "flower-deployment")
    do_legacy = do_flower and args.only != "flower-deployment"
    do_deployment = (
        do_flower and args.only != "flower-legacy" and not args.quick and not args.no_deployment
    )
    # Sections: (name, our cases, Flower legacy's model); memory-only cases after them.
    sections: list[tuple[str, list[str], str | None]] = [
        ("resnet56", ["resnet56-table3", "resnet56-full"], "resnet56")
    ]
    if not args.quick:
        sections += [
            ("large", ["large", "large-nockpt"], "large"),
            ("large-single", ["large-single"], None),
        ]
    raw_cases = {"resnet56-table3", "resnet56-full", "large", "large-single"}
    memory_cases = [] if args.quick else ["large-80"]
    if args.tls:
        sections = [
            ("tls-resnet56", ["resnet56-full", "resnet56-full-tls"], None),
            ("tls-large", ["large", "large-tls"], None),
        ]
        raw_cases, memory_cases = set(), []
        do_flower = do_legacy = do_deployment = False
    flower_models = {"resnet56": "resnet56-full", "large": "large"}

    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "command": " ".join(
            ["python -m benchmarks.aggregation", *(sys.argv[1:] if argv is None else argv)]
        ),
        "quick": args.quick,
        "tls": args.tls,
        "warmup": args.warmup,
        "measured": args.rounds,
        "deployment_measured": args.deployment_rounds,
        "train_seconds": args.train_seconds,
        "client_procs": args.client_procs,
        "machine": machine(),
        "cases": {},
        "results": {},
        "skipped": [],
        "foreign_load": [],
    }
    keys = [k for _, ks, _ in sections for k in ks] + memory_cases
    for key in keys:
        case = all_cases[key]
        report["cases"][key] = {
            "label": case.label,
            "layers": case.layers,
            "num_classes": case.num_classes,
            "tiers": case.tiers,
            "model_bytes": ours.model_bytes(case),
        }
    if args.scale:
        for n in args.scale_clients:
            case = scale_case(n)
            report["cases"][case.key] = {
                "label": case.label,
                "layers": case.layers,
                "num_classes": case.num_classes,
                "tiers": case.tiers,
                "model_bytes": ours.model_bytes(case),
            }
    if "large" in report["cases"] and report["cases"]["large"]["model_bytes"] < 50e6:
        log(
            f"warning: the large model is only {report['cases']['large']['model_bytes'] / 1e6:.1f} MB (< 50 MB)"
        )
    results: dict[str, Any] = report["results"]
    flower_python = args.flower_python
    if do_flower:
        try:
            report["flower_version"] = flower.flower_version(flower_python)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            do_flower = do_legacy = do_deployment = False
            report["skipped"].append(f"Flower ({exc}); run benchmarks/aggregation/setup_flower.sh")
            log(f"Flower unavailable: {exc}")
    if args.quick or args.no_deployment:
        report["skipped"].append(
            "Flower Deployment Engine (" + ("--quick" if args.quick else "--no-deployment") + ")"
        )
    report["imports_rss"] = imports_rss()

    tracker = Tracker(logs)
    try:

        def section(key: str, fn: Callable[[], Any]) -> None:
            tracker.stop_all()  # nothing of an earlier section may linger (e.g. Flower's detached children)
            load = foreign_load(tracker, 1.0)
            report["foreign_load"].append(round(load, 3))
            guarded(results, key, fn, log, load)

        mib = 64 if args.quick else 256
        section("loopback", lambda: run_loopback(tracker, work / "loopback", mib))
        models: dict[str, tuple[Path, int]] = {}
        for name, case_keys, flower_label in sections if args.only != "scale" else []:
            ours_cases = [all_cases[k] for k in case_keys] if do_ours else []
            legacy = None
            if do_legacy and flower_label:
                case = all_cases[flower_models[flower_label]]
                path = work / f"model-{flower_label}.npz"
                models[flower_label] = (path, flower.save_model(ours.model_arrays(case), path))
                legacy = (flower_label, *models[flower_label])
            if not ours_cases and legacy is None:
                continue
            section(
                f"section/{name}",
                lambda name=name, ours_cases=ours_cases, legacy=legacy: run_section(
                    name,
                    tracker,
                    work / f"section-{name}",
                    ours_cases,
                    raw_cases=raw_cases,
                    flower_legacy=legacy,
                    flower_python=flower_python,
                    warmup=args.warmup,
                    measured=args.rounds,
                    client_procs=args.client_procs,
                    train_seconds=args.train_seconds,
                    log=log,
                ),
            )
            found = results.pop(f"section/{name}")
            if "error" in found:  # the section itself failed: so did each of its sides
                found = {
                    k: dict(found)
                    for k in [
                        *(f"{s}/{c.key}" for c in ours_cases for s in ("raw", "ours")),
                        *([f"flower-legacy/{legacy[0]}"] if legacy else []),
                    ]
                }
            seconds = found.pop("section_seconds", None)
            for key, result in found.items():
                results[key] = dict(result, section_seconds=seconds)
        for key in memory_cases if do_ours else []:
            section(
                f"ours/{key}",
                lambda key=key: ours.run_case(
                    all_cases[key],
                    tracker,
                    work / f"ours-{key}",
                    warmup=args.warmup,
                    measured=args.rounds,
                    client_procs=args.client_procs,
                    train_seconds=args.train_seconds,
                ),
            )
        if do_deployment:
            phases = []
            for i, (label, case_key) in enumerate(flower_models.items()):
                if label not in models:
                    path = work / f"model-{label}.npz"
                    models[label] = (
                        path,
                        flower.save_model(ours.model_arrays(all_cases[case_key]), path),
                    )
                phases.append(
                    {
                        "label": label,
                        "model": models[label][0],
                        "model_bytes": models[label][1],
                        "rounds": (args.warmup if i == 0 else 0) + args.deployment_rounds,
                        "warmup": args.warmup if i == 0 else 0,
                    }
                )
            section(
                "flower-deployment",
                lambda: run_deployment(
                    flower_python, tracker, work / "flower-deployment", phases, results, log
                ),
            )
            for label in flower_models:
                results.setdefault(
                    f"flower-deployment/{label}",
                    {"error": results["flower-deployment"].get("error", "not run")},
                )
        if args.scale:
            for n in args.scale_clients:
                section(
                    f"scale/{n}",
                    lambda n=n: run_scale_count(
                        tracker,
                        work / f"scale-{n}",
                        n,
                        warmup=args.warmup,
                        measured=args.scale_rounds,
                        client_procs=args.scale_procs,
                        log=log,
                    ),
                )
        section("loopback_end", lambda: run_loopback(tracker, work / "loopback-end", mib))
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


def run_deployment(
    python: Path,
    tracker: Tracker,
    work: Path,
    phases: list[dict[str, Any]],
    results: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
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
