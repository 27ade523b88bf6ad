"""The aggregation benchmark's report: the tables and the verdicts on the targets.

Each verdict is taken on the quantity its target names (``Verdict.measured``, whose
numbers decide ``met``); where another reading of the same question is worth knowing, it
is printed beside it (``Verdict.other``) and never decides anything:

* round overhead: FlexTrain with every client at full depth against Flower's fastest
  path on the same full model (like for like); the Table 3 mix and the per-round
  ratios of the interleaved rounds beside it;
* throughput: bytes on the wire per second as a share of the run's best one-way raw
  loopback figure (the ceiling); the share of the raw rounds of the same traffic, run
  next to ours, beside it;
* memory: the aggregator's absolute peak RSS against 4 x the model + 300 MB; what it
  holds above its idle RSS, and what importing its libraries alone takes, beside it;
* scale: the aggregator's CPU and the round time per client, from the fewest to the
  most clients of the scale case, must stay within SCALE_FLATNESS_FACTOR.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Any

MIB = 2**20
MB = 1e6

#: Targets from the issue.
TARGET_OVERHEAD_RATIO = 0.5  # FlexTrain's round latency / Flower's fastest path's, like for like
TARGET_BYTES_SHARE = 0.558  # Table 3 mix, share of full-model FedAvg bytes
TARGET_THROUGHPUT_SHARE = 0.70  # of the run's one-way raw loopback ceiling
#: Memory: the aggregator's absolute peak RSS at most this multiple of the model ...
TARGET_MEMORY_MULTIPLE = 4.0
#: ... plus this many bytes (300 MB).
TARGET_MEMORY_FIXED_BYTES = 300 * MB
#: Per-client cost at the most clients of the scale case may be at most this multiple of
#: the cost at the fewest: work per round that grows faster than the clients (say, a
#: pass over all clients for each client) would show as a growing per-client cost.
SCALE_FLATNESS_FACTOR = 1.5
#: The configuration the memory growth with the model is taken from (a 3.5 MB model).
BASE_MEMORY_CASE = "ours/resnet56-table3"

PATH_NAMES = {"legacy": "legacy gRPC (start_server)", "deployment": "Deployment Engine"}


def memory_limit(model_bytes: float) -> float:
    """The memory target for a model of `model_bytes`: 4 x model + 300 MB."""
    return TARGET_MEMORY_MULTIPLE * model_bytes + TARGET_MEMORY_FIXED_BYTES


@dataclass(frozen=True)
class Verdict:
    """One target: what it asks, the measured quantity it names, met or not (None:
    cannot be decided), and another reading printed beside it."""

    target: str
    measured: str
    met: bool | None
    other: str = ""

    def row(self) -> str:
        return f"| {self.target} | {self.measured} | {_ok(self.met)} | {self.other or '–'} |"


@dataclass(frozen=True)
class Ceiling:
    """The run's one-way raw loopback ceiling: the best of its figures."""

    mib_s: float
    #: Where it comes from, and the other measurement of the run.
    text: str


@dataclass(frozen=True)
class RawShare:
    """How much of raw loopback our aggregator keeps for the same traffic (the bytes
    are the same by construction)."""

    raw: dict[str, Any]
    #: Median over the measured rounds of raw round r's time / our round r's time, the
    #: two run one after the other. None if the rounds were not interleaved.
    paired: float | None
    #: Best raw round / our median round: the most conservative reading.
    best: float


# -- small helpers ---------------------------------------------------------------------


def _ok(flag: bool | None) -> str:
    return "–" if flag is None else ("**met**" if flag else "**NOT met**")


def _mib(n: float | None) -> str:
    return "–" if n is None else f"{n / MIB:,.1f}"


def _mb(n: float) -> str:
    return f"{n / MB:,.0f} MB"


def round_seconds(r: dict[str, Any]) -> list[float]:
    return [x["seconds"] for x in r.get("rounds", [])]


def spread(r: dict[str, Any]) -> str:
    """Median round latency, then min-max and the number of rounds."""
    rounds = round_seconds(r)
    if not rounds:
        return "–"
    return f"{statistics.median(rounds):.3f} ({min(rounds):.3f}–{max(rounds):.3f}, n={len(rounds)})"


def ceiling_of(res: dict[str, Any]) -> Ceiling | None:
    """The best one-way figure of the loopback measurements at the start and the end."""
    found = {k: res[k] for k in ("loopback", "loopback_end") if "ceiling_mib_s" in res.get(k, {})}
    if not found:
        return None
    best = max(found, key=lambda k: found[k]["ceiling_mib_s"])
    where = {"loopback": "start", "loopback_end": "end"}
    direction, _, streams = found[best]["ceiling_from"].removesuffix("_mib_s").partition("_")
    source = f"{'server → client' if direction == 'download' else 'client → server'}, {streams.replace('_', ' ')}"
    both = ", ".join(f"{where[k]} {v['ceiling_mib_s']:,.0f}" for k, v in found.items())
    return Ceiling(
        found[best]["ceiling_mib_s"],
        f"{source}, at the {where[best]} of the run; best figures: {both} MiB/s",
    )


def raw_share(res: dict[str, Any], ours_key: str) -> RawShare | None:
    ours = res.get(ours_key, {})
    case = ours_key.split("/", 1)[1]
    raw = res.get("raw/" + case, {})
    if "round_seconds_median" not in ours or "round_seconds_best" not in raw:
        return None
    mine = round_seconds(ours)
    theirs = raw.get("round_seconds", [])
    paired = None
    if raw.get("paired") and mine and len(mine) == len(theirs):
        paired = statistics.median(t / m for t, m in zip(theirs, mine, strict=True))
    return RawShare(raw, paired, raw["round_seconds_best"] / ours["round_seconds_median"])


def paired_ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> float | None:
    """Median of our round r / their round r, when the two ran interleaved in one
    section (round r of each within seconds of the other)."""
    mine, other = round_seconds(ours), round_seconds(theirs)
    if (
        not ours.get("section")
        or ours.get("section") != theirs.get("section")
        or len(mine) != len(other)
        or not mine
    ):
        return None
    return statistics.median(m / t for m, t in zip(mine, other, strict=True))


def _label(report: dict[str, Any], key: str) -> str:
    return str(report["cases"].get(key.split("/", 1)[-1], {}).get("label", key))


# -- verdicts ----------------------------------------------------------------------------


def overhead_verdicts(report: dict[str, Any]) -> list[Verdict]:
    """Round overhead against Flower's fastest path on the same full model: FlexTrain
    with every client at full depth (ResNet-56, then the large model)."""
    res = report["results"]
    out = []
    for ours_key, flower_label, beside_key in (
        ("ours/resnet56-full", "resnet56", "ours/resnet56-table3"),
        ("ours/large", "large", None),
    ):
        ours = res.get(ours_key, {})
        valid = {
            p: r
            for p in ("legacy", "deployment")
            if "round_seconds_median" in (r := res.get(f"flower-{p}/{flower_label}", {}))
        }
        if "round_seconds_median" not in ours or not valid:
            continue
        fastest = min(valid, key=lambda p: valid[p]["round_seconds_median"])
        theirs = valid[fastest]
        ratio = ours["round_seconds_median"] / theirs["round_seconds_median"]
        measured = (
            f"FlexTrain, all {ours['clients']} at full depth: {spread(ours)} s; Flower {PATH_NAMES[fastest]}: "
            f"{spread(theirs)} s; medians: **{ratio:.2f}×**"
        )
        other = []
        paired = paired_ratio(ours, theirs)
        if paired is not None:
            other.append(
                f"interleaved rounds, median of our round r / Flower's round r: {paired:.2f}×"
            )
        beside = res.get(beside_key or "", {})
        if "round_seconds_median" in beside:
            other.append(
                f"Table 3 mix: {spread(beside)} s = {beside['round_seconds_median'] / theirs['round_seconds_median']:.2f}×"
            )
        other += [
            f"vs Flower {PATH_NAMES[p]} ({spread(r)} s): {ours['round_seconds_median'] / r['round_seconds_median']:.3f}×"
            for p, r in valid.items()
            if p != fastest
        ]
        model = report["cases"].get(ours_key.split("/", 1)[1], {}).get("model_bytes", 0)
        name = (
            "ResNet-56/100 classes" if flower_label == "resnet56" else f"{model / MB:.1f} MB model"
        )
        out.append(
            Verdict(
                f"round overhead ≤ {TARGET_OVERHEAD_RATIO:g}× Flower's fastest path, like for like: FlexTrain with all "
                f"clients at full depth vs Flower's full model ({name})",
                measured,
                ratio <= TARGET_OVERHEAD_RATIO,
                "; ".join(other),
            )
        )
    return out


def bytes_verdict(res: dict[str, Any]) -> Verdict | None:
    ours = res.get("ours/resnet56-table3", {})
    if "bytes_share_of_fedavg" not in ours:
        return None
    share = ours["bytes_share_of_fedavg"]
    return Verdict(
        f"bytes per round ≈ {TARGET_BYTES_SHARE:.1%} of full-model FedAvg (Table 3 mix)",
        f"{_mib(ours['bytes_per_round'])} of {_mib(ours['fedavg_bytes_per_round'])} MiB = **{share:.2%}**",
        abs(share - TARGET_BYTES_SHARE) <= 0.005,
        f"expected from the prefix sizes: {ours['bytes_per_round_expected'] / ours['fedavg_bytes_per_round']:.2%}",
    )


def throughput_verdict(
    res: dict[str, Any], ours_key: str, name: str, ceiling: Ceiling | None
) -> Verdict | None:
    """Throughput as a share of the run's one-way loopback ceiling; the raw rounds of
    the same traffic, interleaved with ours, beside it."""
    ours = res.get(ours_key, {})
    if "throughput_mib_s" not in ours or ceiling is None:
        return None
    share = ours["throughput_mib_s"] / ceiling.mib_s
    measured = (
        f"{ours['throughput_mib_s']:,.0f} MiB/s (bytes on the wire / median round {ours['round_seconds_median']:.3f} s) "
        f"= **{share:.0%}** of the ceiling, {ceiling.mib_s:,.0f} MiB/s: {ceiling.text}"
    )
    other = ""
    same = raw_share(res, ours_key)
    if same is not None:
        paired = (
            f"{same.paired:.0%} (median over {len(round_seconds(ours))} round(s) of raw round r / our round r, run "
            "one after the other); "
            if same.paired is not None
            else ""
        )
        other = (
            f"share of raw rounds of the same traffic: {paired}best raw round ({same.raw['round_seconds_best']:.3f} s) "
            f"vs our median: {same.best:.0%}; the raw rounds themselves reach "
            f"{same.raw['mib_s_median'] / ceiling.mib_s:.0%} of the ceiling"
        )
    return Verdict(
        f"aggregator throughput ≥ {TARGET_THROUGHPUT_SHARE:.0%} of the run's one-way raw loopback ceiling ({name})",
        measured,
        share >= TARGET_THROUGHPUT_SHARE,
        other,
    )


def _above_idle(result: dict[str, Any]) -> int:
    return int(result["server_peak_rss_bytes"] - result["server_idle_rss_bytes"])


def memory_verdict(
    res: dict[str, Any],
    ours_key: str,
    name: str,
    imports: dict[str, int] | None,
    flower_mem: str = "",
) -> Verdict | None:
    """Absolute peak RSS against 4 x model + 300 MB; what the aggregator holds above
    its idle RSS (and how that grows with the model) beside it."""
    ours = res.get(ours_key, {})
    if "server_peak_rss_bytes" not in ours:
        return None
    model = ours["model_bytes"]
    peak = ours["server_peak_rss_bytes"]
    limit = memory_limit(model)
    measured = (
        f"peak RSS **{_mb(peak)}** ({_mib(peak)} MiB) vs {_mb(limit)} = {TARGET_MEMORY_MULTIPLE:g} × "
        f"{model / MB:.1f} MB + {_mb(TARGET_MEMORY_FIXED_BYTES)}"
    )
    above = _above_idle(ours)
    other = [f"above idle: {_mib(above)} MiB = {above / model:.1f}× the model"]
    base = res.get(BASE_MEMORY_CASE, {})
    if (
        ours_key != BASE_MEMORY_CASE
        and "server_peak_rss_bytes" in base
        and base["model_bytes"] < model
    ):
        slope = (above - _above_idle(base)) / (model - base["model_bytes"])
        other.append(
            f"growth from the {base['model_bytes'] / MB:.1f} MB model's {_mib(_above_idle(base))} MiB: "
            f"{slope:.1f} bytes per byte of model"
        )
    other.append(f"idle RSS {_mib(ours['server_idle_rss_bytes'])} MiB")
    if imports and "VmRSS" in imports:
        split = (
            f" ({_mib(imports['RssAnon'])} anonymous, {_mib(imports['RssFile'])} file-backed)"
            if "RssAnon" in imports and "RssFile" in imports
            else ""
        )
        other.append(
            f"importing the aggregator's libraries alone (torch, grpc): {_mib(imports['VmRSS'])} MiB{split}"
        )
    if flower_mem:
        other.append(flower_mem)
    return Verdict(
        f"aggregator peak RSS ≤ {TARGET_MEMORY_MULTIPLE:g} × model + 300 MB ({name})",
        measured,
        peak <= limit,
        "; ".join(other),
    )


# -- scale -------------------------------------------------------------------------------


def scale_results(res: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(clients, result) of the scale case's counts that finished, fewest first."""
    found = [
        (int(k.split("/", 1)[1]), v)
        for k, v in res.items()
        if k.startswith("scale/") and "rounds" in v
    ]
    return sorted(found)


def per_client(r: dict[str, Any]) -> tuple[float | None, float]:
    """(aggregator CPU seconds per client per round, round seconds per client)."""
    n = r["clients"]
    cpu = r.get("server_cpu_seconds_per_round")
    return (None if cpu is None else cpu / n), r["round_seconds_median"] / n


def scale_verdicts(report: dict[str, Any]) -> list[Verdict]:
    res = report["results"]
    found = scale_results(res)
    if len(found) < 2:
        return []
    (n0, r0), (n1, r1) = found[0], found[-1]
    cpu0, sec0 = per_client(r0)
    cpu1, sec1 = per_client(r1)
    out = []
    steps = []
    for (na, ra), (nb, rb) in itertools.pairwise(found):
        if (
            ra.get("server_cpu_seconds_per_round") is not None
            and rb.get("server_cpu_seconds_per_round") is not None
        ):
            added = (rb["server_cpu_seconds_per_round"] - ra["server_cpu_seconds_per_round"]) / (
                nb - na
            )
            steps.append(f"{na}→{nb}: {added * 1e3:.2f} ms")
    if cpu0 and cpu1:
        ratio = cpu1 / cpu0
        out.append(
            Verdict(
                f"aggregator CPU per client per round flat as clients grow: at {n1:,} clients ≤ "
                f"{SCALE_FLATNESS_FACTOR:g}× that at {n0:,}",
                f"{cpu1 * 1e3:.2f} ms at {n1:,} vs {cpu0 * 1e3:.2f} ms at {n0:,}: **{ratio:.2f}×**",
                ratio <= SCALE_FLATNESS_FACTOR,
                "aggregator CPU per added client between counts: " + ", ".join(steps)
                if steps
                else "",
            )
        )
    ratio = sec1 / sec0
    out.append(
        Verdict(
            f"round time per client flat as clients grow: at {n1:,} clients ≤ {SCALE_FLATNESS_FACTOR:g}× that at {n0:,}",
            f"{sec1 * 1e3:.2f} ms at {n1:,} vs {sec0 * 1e3:.2f} ms at {n0:,}: **{ratio:.2f}×**",
            ratio <= SCALE_FLATNESS_FACTOR,
            f"median rounds {r1['round_seconds_median']:.2f} s and {r0['round_seconds_median']:.2f} s; clients' "
            "own CPU per client per round: "
            + ", ".join(
                f"{r['clients_cpu_seconds_per_round'] / n * 1e3:.2f} ms at {n:,}" for n, r in found
            ),
        )
    )
    grow = (r1["server_peak_rss_bytes"] - r0["server_peak_rss_bytes"]) / (n1 - n0)
    mem = memory_verdict(
        res,
        f"scale/{n1}",
        f"ResNet-56 Table 3 mix, {n1:,} clients",
        report.get("imports_rss"),
    )
    if mem is not None:
        out.append(
            Verdict(
                mem.target,
                mem.measured,
                mem.met,
                f"peak grows {grow / 1024:,.0f} KiB per client from {n0:,} to {n1:,} clients; "
                + mem.other,
            )
        )
    return out


def render_scale(report: dict[str, Any]) -> list[str]:
    res = report["results"]
    keys = sorted((k for k in res if k.startswith("scale/")), key=lambda k: int(k.split("/", 1)[1]))
    if not keys:
        return []
    lines = [
        "## Scale: one aggregator, ResNet-56/100 classes with the Table 3 mix, up to 1,000 clients",
        "",
        "The Table 3 mix scaled to N clients (each depth keeps its share: N/10 clients at each of depths "
        "8-25, 3N/10 at 27), fake trainers as threads in a few processes (no training); every other "
        "setting as above (checkpoint every round). Per client: aggregator CPU seconds of a round, and the "
        "round's latency, divided by the clients.",
        "",
        "| clients (processes) | round latency, s: median (min–max, n) | round ms per client | "
        "aggregator CPU s / round | aggregator CPU ms per client per round | clients' CPU s / round | "
        "MiB on the wire / round | aggregator peak RSS (MiB) | above idle (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        r = res[key]
        n = int(key.split("/", 1)[1])
        if "rounds" not in r:
            lines.append(f"| {n:,} | FAILED: {str(r.get('error', '?'))[:160]} | | | | | | | |")
            continue
        cpu, sec = per_client(r)
        server = r.get("server_cpu_seconds_per_round")
        lines.append(
            f"| {n:,} ({r['client_processes']}) | {spread(r)} | {sec * 1e3:.2f} | "
            f"{'–' if server is None else f'{server:.2f}'} | {'–' if cpu is None else f'{cpu * 1e3:.2f}'} | "
            f"{r['clients_cpu_seconds_per_round']:.2f} | {_mib(r['bytes_per_round'])} | "
            f"{_mib(r['server_peak_rss_bytes'])} | {_mib(_above_idle(r))} |"
        )
    verdicts = scale_verdicts(report)
    if verdicts:
        lines += [
            "",
            "| target | measured | result | other reading (not the verdict) |",
            "|---|---|---|---|",
        ]
        lines += [v.row() for v in verdicts]
    return [*lines, ""]


# -- the report --------------------------------------------------------------------------


def render_targets(report: dict[str, Any]) -> list[str]:
    res = report["results"]
    ceiling = ceiling_of(res)
    imports = report.get("imports_rss")
    verdicts: list[Verdict | None] = [*overhead_verdicts(report), bytes_verdict(res)]
    for key in ("ours/large", "ours/resnet56-table3", "ours/large-single"):
        verdicts.append(throughput_verdict(res, key, _label(report, key), ceiling))
    flowers = {
        "ours/resnet56-table3": "resnet56",
        "ours/resnet56-full": "resnet56",
        "ours/large": "large",
    }
    for key in ("ours/resnet56-table3", "ours/resnet56-full", "ours/large", "ours/large-80"):
        label = flowers.get(key)
        flower_mem = (
            "; ".join(
                f"Flower {PATH_NAMES[p]}: {_mb(r['server_peak_rss_bytes'])} peak"
                for p in ("legacy", "deployment")
                if "server_peak_rss_bytes" in (r := res.get(f"flower-{p}/{label}", {}))
            )
            if label
            else ""
        )
        verdicts.append(memory_verdict(res, key, _label(report, key), imports, flower_mem))
    rows = [v.row() for v in verdicts if v is not None]
    if not rows:
        return []
    return [
        "## Targets",
        "",
        "Each verdict is on the quantity its target names; the last column is another reading of the "
        "same question, shown for context, never instead of the verdict.",
        "",
        "| target | measured | result | other reading (not the verdict) |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _cpu(r: dict[str, Any]) -> str:
    return "; ".join(
        f"{r[k]:.2f}" if r.get(k) is not None else "–"
        for k in ("server_cpu_seconds_per_round", "clients_cpu_seconds_per_round")
    )


def _per_round(r: dict[str, Any], who: str) -> str:
    value = r.get(f"{who}_cpu_seconds_per_round")
    return "–" if value is None else f"{value:.2f}"


def render_tls(report: dict[str, Any]) -> str:
    """`--tls`: each model's rounds with and without TLS, interleaved in one section."""
    res = report["results"]
    m = report["machine"]
    lines = [
        "# What TLS costs the aggregator's rounds (loopback)",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}); Python {m['python']}, grpcio {m['grpcio']}. "
        f"Run {report['started']}, {report['wall_seconds']:.0f}s. {report['warmup']} warm-up + "
        f"{report['measured']} measured rounds of each configuration; per model, the rounds with and without "
        "TLS alternate (the order rotating every round), so a change in the machine's load falls on both. "
        "20 clients at full depth, a checkpoint every round, no training. TLS: ECDSA P-256 certificate "
        "from the operator's per-job CA code, verified by every client.",
        "",
        "| model | plaintext round (s) | TLS round (s) | TLS / plaintext (paired median) | aggregator CPU per round, plaintext → TLS (s) | clients' CPU per round, plaintext → TLS (s) |",
        "|---|---|---|---|---|---|",
    ]
    for plain_key in ("resnet56-full", "large"):
        plain, tls = res.get(f"ours/{plain_key}", {}), res.get(f"ours/{plain_key}-tls", {})
        label = _label(report, f"ours/{plain_key}").removesuffix(", all 20 at full depth")
        if "error" in plain or "error" in tls or not plain or not tls:
            why = plain.get("error") or tls.get("error") or "not run"
            lines.append(f"| {label} | FAILED: {why} | | | | |")
            continue
        ratio = paired_ratio(tls, plain)
        lines.append(
            f"| {label} ({_mb(plain['model_bytes'])}) | {spread(plain)} | {spread(tls)} | "
            + (f"{ratio:.3f} ({(ratio - 1) * 100:+.1f} %)" if ratio is not None else "–")
            + f" | {_per_round(plain, 'server')} → {_per_round(tls, 'server')} | "
            f"{_per_round(plain, 'clients')} → {_per_round(tls, 'clients')} |"
        )
    load = report.get("foreign_load") or []
    if load:
        lines += ["", f"Load of other processes before each section (cores): {', '.join(f'{x:.2f}' for x in load)}."]
    return "\n".join(lines) + "\n"


def render(report: dict[str, Any]) -> str:
    if report.get("tls"):
        return render_tls(report)
    res = report["results"]
    lb = res.get("loopback", {})
    ceiling = ceiling_of(res)
    m = report["machine"]
    lines = [
        "# Aggregator round overhead: FlexTrain vs Flower (loopback)",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_bytes'] / 2**30:.0f} GiB; Python {m['python']}, "
        f"torch {m['torch']}, grpcio {m['grpcio']}; Flower {report.get('flower_version', 'not run')}. "
        f"Run {report['started']}, {report['wall_seconds']:.0f}s{' (--quick)' if report['quick'] else ''}.",
        f"Rounds: {report['warmup']} warm-up + {report['measured']} measured of every configuration, FlexTrain's, "
        "their raw rounds' and Flower legacy's interleaved (one round of each in turn, the order rotating)"
        + (
            f"; {report['warmup']} + {report['deployment_measured']} for Flower's Deployment Engine, in a section of "
            "its own"
            if any(k.startswith("flower-deployment/") for k in res)
            else ""
        )
        + " (latency: median, then min–max and the number of rounds). FlexTrain's aggregator writes a checkpoint "
        "every round, as the product does by default. "
        + (
            f"Every client sleeps {report['train_seconds']:g} s between its pull and its push (--train-seconds: "
            "a stand-in for local training), which the rounds include."
            if report.get("train_seconds")
            else "Clients do no training: transport, serialisation, orchestration, merging and checkpoints only."
        ),
        "",
    ]
    if lb and "error" not in lb:
        end = res.get("loopback_end", {})
        lines += [
            "## Raw loopback gRPC throughput (the ceiling, same run)",
            "",
            "| direction | 1 stream (MiB/s) | 20 streams (MiB/s) |",
            "|---|---|---|",
            f"| server → client (server-streaming, like PullModel) | {lb['download_1_stream_mib_s']:,.0f} | "
            f"{lb['download_20_streams_mib_s']:,.0f} |",
            f"| client → server (client-streaming, like PushUpdate) | {lb['upload_1_stream_mib_s']:,.0f} | "
            f"{lb['upload_20_streams_mib_s']:,.0f} |",
            "",
            "Measured at the start of the run (2 MiB chunks, raw bytes, grpc.aio server and sync client in "
            "separate processes)"
            + (
                f"; at its end: {end['download_1_stream_mib_s']:,.0f} / {end['download_20_streams_mib_s']:,.0f} down, "
                f"{end['upload_1_stream_mib_s']:,.0f} / {end['upload_20_streams_mib_s']:,.0f} up"
                if "ceiling_mib_s" in end
                else ""
            )
            + (
                f". The ceiling: **{ceiling.mib_s:,.0f} MiB/s**, {ceiling.text}."
                if ceiling
                else "."
            ),
            "",
        ]
    elif lb:
        lines += [f"Raw loopback measurement failed: {lb['error']}", ""]
    raws = [(k, v) for k, v in res.items() if k.startswith("raw/")]
    if raws:
        lines += [
            "Raw loopback for exactly each configuration's round traffic (the other reading of the throughput "
            "target): every client pulls the bytes of its prefix, then pushes as many back, all clients at "
            "once, as threads spread over the same processes as the fake trainers; raw bytes, no framing, no "
            "checks, no merge. Each client sends its own distinct memory, as a trainer sends its own tensors "
            "(the server sends one shared copy, as the aggregator does). Its rounds are interleaved with "
            "FlexTrain's.",
            "",
            "| configuration | clients (processes) | MiB / round | raw round, s: best (median) | raw MiB/s: best (median) | CPU s / round: server; clients |",
            "|---|---|---|---|---|---|",
        ]
        for key, r in raws:
            label = _label(report, key)
            if "error" in r:
                lines.append(f"| {label} | FAILED: {r['error'][:160]} | | | | |")
                continue
            lines.append(
                f"| {label} | {r['clients']} ({r['processes']}) | {_mib(r['bytes_per_round'])} | "
                f"{r['round_seconds_best']:.3f} ({r['round_seconds_median']:.3f}) | {r['mib_s_best']:,.0f} ({r['mib_s_median']:,.0f}) | {_cpu(r)} |"
            )
        lines.append("")

    lines += [
        "## Per-round results (20 clients; the last rows: one client alone, then 80 clients)",
        "",
        "| configuration | system | round latency, s: median (min–max, n) | bytes on the wire / round (MiB) | "
        "share of full-model FedAvg | throughput (MiB/s) | share of the one-way ceiling | share of raw rounds "
        "of the same traffic: paired (best raw round) | CPU s / round: server; clients | server peak RSS (MiB) | "
        "above idle (MiB; × model) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [
        ("resnet56-table3", "ours/resnet56-table3", "FlexTrain aggregator"),
        ("resnet56-full", "ours/resnet56-full", "FlexTrain aggregator, all full depth"),
        ("resnet56-full", "flower-legacy/resnet56", "Flower legacy gRPC (start_server)"),
        ("resnet56-full", "flower-deployment/resnet56", "Flower Deployment Engine"),
        ("large", "ours/large", "FlexTrain aggregator"),
        ("large-nockpt", "ours/large-nockpt", "FlexTrain aggregator, no checkpoints"),
        ("large", "flower-legacy/large", "Flower legacy gRPC (start_server)"),
        ("large", "flower-deployment/large", "Flower Deployment Engine"),
        ("large-single", "ours/large-single", "FlexTrain aggregator, one client"),
        ("large-80", "ours/large-80", "FlexTrain aggregator, 80 clients"),
    ]
    for case_key, key, system in order:
        r = res.get(key)
        if r is None or case_key not in report["cases"]:
            continue
        label = report["cases"][case_key]["label"]
        if key.startswith("flower-"):
            label = (
                label.replace(", all 20 at full depth", "").replace(", Table 3 mix", "")
                + ", full model"
            )
        model = report["cases"][case_key]["model_bytes"]
        label = f"{label}; model {model / 1e6:.1f} MB"
        if "error" in r:
            lines.append(f"| {label} | {system} | FAILED: {r['error'][:160]} | | | | | | | | |")
            continue
        same = raw_share(res, key) if key.startswith("ours/") else None
        raw_col = "–"
        if same is not None:
            raw_col = (
                f"{same.paired:.0%} " if same.paired is not None else ""
            ) + f"({same.best:.0%})"
        share = f"{r['throughput_mib_s'] / ceiling.mib_s:.0%}" if ceiling else "–"
        above = r["server_peak_rss_bytes"] - r.get("server_idle_rss_bytes", 0)
        lines.append(
            f"| {label} | {system} | {spread(r)} | {_mib(r['bytes_per_round'])} | {r['bytes_share_of_fedavg']:.1%} | "
            f"{r['throughput_mib_s']:,.0f} | {share} | {raw_col} | {_cpu(r)} | {_mib(r['server_peak_rss_bytes'])} | "
            f"{_mib(above)}; {above / model:.1f}× |"
        )
    lines += [
        "",
        "Bytes on the wire = tensor payload pulled + pushed by all clients in a round (FlexTrain: "
        "counted by the clients; Flower: model bytes × clients × 2, its framing not counted). "
        "Throughput = those bytes / median round latency. Server peak RSS = VmHWM of the "
        "aggregator process (FlexTrain), of the start_server() process (Flower legacy), of "
        "SuperLink + ServerApp (Deployment Engine, sum of the two peaks); idle = RSS once the "
        "server is up with its model loaded, before clients connect (FlexTrain's idle includes "
        "importing torch"
        + (
            f": {_mib(report['imports_rss']['VmRSS'])} MiB for its imports alone with this torch build"
            if (report.get("imports_rss") or {}).get("VmRSS")
            else ""
        )
        + "). CPU s / round: CPU seconds of the server process(es), then of all client-side processes, per "
        "measured round, from its start signal to its end (Deployment Engine: the whole run per round, "
        "warm-up included; its clients = SuperNodes + SuperExecs + ClientApps); all share the same cores. "
        "Every round starts at a time every client (Flower legacy: the server) waits for.",
        "",
    ]
    waits = [
        (k, r["time_to_model_seconds"])
        for k, r in res.items()
        if k.startswith("ours/") and "time_to_model_seconds" in r
    ]
    if waits:
        lines += [
            "Time to model (FlexTrain): from a round's start until a client holds its model, for the first, the "
            "median and the last client (medians over the measured rounds). Pulls are served in the order they "
            "began, a few at a time, so the first clients can train while the others still pull:",
            "",
            *(
                f"- {_label(report, k)}: {w[0]:.3f} s / {w[1]:.3f} s / {w[2]:.3f} s"
                for k, w in waits
            ),
            "",
        ]
    lines += render_targets(report)
    lines += render_scale(report)
    lines += render_notes(report)
    return "\n".join(lines) + "\n"


def render_notes(report: dict[str, Any]) -> list[str]:
    res = report["results"]
    notes = ["## How each side ran", ""]
    ours = res.get("ours/resnet56-table3", {})
    procs = ours.get("client_processes", report["client_procs"])
    notes.append(
        f"- FlexTrain: `python -m flextrain aggregator` (one process, JSON logs, `--checkpoint-dir` on the run's "
        f"work disk: a checkpoint is written, fsynced and renamed as every round closes, inside the round's "
        f"latency, as the operator's default emptyDir volume and the default `everyRounds: 1` do) with a JobPlan "
        f"built from a FlexTrainJob (dataset `synthetic`, numClasses set; evaluateEveryRounds beyond the job, one "
        f"round more than the clients run, so no evaluation happens); 20 fake trainers (`AggregatorClient`: join, "
        f"pull, push the pulled tensors unchanged) as threads in {procs} processes. Latency of round r = last push "
        "answer of r (sent after the merge and the checkpoint) − the start time the benchmark gave round r, which "
        "every client waits for before it pulls; connections are closed only after the last measured round."
    )
    notes.append(
        f"- Flower legacy: `flwr.server.start_server` (deprecated, `flwr.compat`) with FedAvg (fraction_fit 1, "
        f"min clients 20, fraction_evaluate 0, no checkpoints) in one process; 20 `start_client` NumPyClients "
        f"returning the received parameters from fit(), as threads in {procs} processes. The server begins each "
        "round at the start time the benchmark gives it; latency = configure_fit start → aggregate_fit end."
    )
    notes.append(
        "- Interleaving: within a section every system is up, and the benchmark runs one round of each in turn "
        "(the order rotating by one each time), so that the machine's drift (1.5-2x within minutes here) falls "
        "on all of them alike; a system waiting its turn does nothing but look for its start file every 20 ms."
    )
    notes.append(
        "- Flower Deployment Engine: `flower-superlink --insecure` + 20 `flower-supernode --insecure` (subprocess "
        "isolation: each SuperNode runs a SuperExec that starts one `flwr-clientapp` process per message), the "
        "app in benchmarks/aggregation/flower_app (message-API FedAvg, fraction_evaluate 0; the ClientApp returns "
        "the received ArrayRecord) submitted with `flwr run`, in a section of its own (its rounds take 1-2 "
        "minutes, whatever the model, and its federation keeps polling between them). Both models run as phases "
        "of one Flower run: the first round of the first phase is the warm-up (app install on every SuperNode). "
        "Latency = configure_train start → aggregate_train end."
    )
    dep = {
        k: v
        for k, v in res.items()
        if k.startswith("flower-deployment/") and "cpu_seconds_by_process" in v
    }
    for key, r in dep.items():
        cpu = ", ".join(
            f"{k} {v:.0f}s"
            for k, v in sorted(r["cpu_seconds_by_process"].items(), key=lambda kv: -kv[1])
        )
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
    failed = [
        f"`{k}`: {v['error']}" for k, v in res.items() if isinstance(v, dict) and "error" in v
    ]
    if failed:
        notes.append("- Failures (tracebacks in aggregation.json): " + "; ".join(failed))
    return [*notes, ""]
