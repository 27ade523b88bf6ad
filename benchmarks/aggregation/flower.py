"""The Flower side, both networked paths, on loopback, with Flower's own processes.

* legacy: `start_server` / `start_client` (gRPC bidirectional streaming, `flwr.compat`):
  one server process, clients as threads in a few processes (flower_legacy.py).
* deployment: the current Deployment Engine: `flower-superlink` + one
  `flower-supernode` per client (each starts its SuperExec, which starts a ClientApp
  process per message) and the Flower App in flower_app/ submitted with `flwr run`.

Round latency = server-side wall time of the round, from the strategy's configure
(`configure_fit` / `configure_train`) to the end of its aggregate (`aggregate_fit` /
`aggregate_train`), recorded by a FedAvg subclass. Federated evaluation is off
(fraction_evaluate=0) and there is no centralised evaluation, as on our side.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.aggregation.procs import (
    Tracker,
    cpu_seconds,
    free_port,
    proc_status,
    wait_for,
    write_atomically,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
APP_DIR = HERE / "flower_app"


def flower_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{python} cannot import flwr: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def save_model(arrays: dict[str, np.ndarray], path: Path) -> int:
    """The model as .npz (keys keep the state-dict order); returns its bytes."""
    np.savez(path, **{f"{i:05d}": a for i, a in enumerate(arrays.values())})  # type: ignore[arg-type]
    return int(sum(a.nbytes for a in arrays.values()))


def _summarise(
    rounds: dict[str, dict[str, float]], warmup: int, clients: int, model_bytes: int
) -> dict[str, Any]:
    per_round = []
    for key in sorted(rounds, key=int):
        number = int(key)
        entry = rounds[key]
        if number <= warmup:
            continue
        if "end" not in entry:
            raise RuntimeError(f"round {number} did not finish: {entry}")
        if entry.get("results", entry.get("replies", clients)) != clients:
            raise RuntimeError(
                f"round {number}: {entry.get('results', entry.get('replies'))} of {clients} results"
            )
        per_round.append(
            {
                "round": number,
                "seconds": entry["end"] - entry["start"],
                **{k: v for k, v in entry.items() if k.endswith("bytes")},
            }
        )
    if not per_round:
        raise RuntimeError("no measured rounds")
    seconds = [r["seconds"] for r in per_round]
    fedavg = model_bytes * clients * 2
    median = statistics.median(seconds)
    measured_bytes = [r["sent_bytes"] + r["received_bytes"] for r in per_round if "sent_bytes" in r]
    return {
        "rounds": per_round,
        "round_seconds_median": median,
        "round_seconds_mean": statistics.fmean(seconds),
        "bytes_per_round": fedavg,
        "serialised_bytes_per_round": statistics.median(measured_bytes) if measured_bytes else None,
        "fedavg_bytes_per_round": fedavg,
        "bytes_share_of_fedavg": 1.0,
        "throughput_mib_s": fedavg / median / 2**20,
    }


class LegacyRun:
    """Flower legacy (`start_server` + `start_client` threads in `client_procs`
    processes), round by round so that its rounds can alternate with other systems':
    ``start`` (server and clients up), ``run_round`` for rounds 1, 2, ... (the first
    ``warmup`` are not counted), ``finish`` for the numbers, ``close`` stops every
    process (use it as a context manager). The server begins round R at the start time
    the benchmark writes into go-R (flower_legacy.py --sync-dir) and writes done-R when
    its aggregate_fit ends."""

    def __init__(
        self,
        python: Path,
        model: Path,
        model_bytes: int,
        tracker: Tracker,
        work: Path,
        *,
        label: str,
        clients: int,
        warmup: int,
        measured: int,
        client_procs: int,
    ) -> None:
        self.python, self.model, self.model_bytes, self.tracker = (
            python,
            model,
            model_bytes,
            tracker,
        )
        self.work, self.label, self.clients, self.warmup = work, label, clients, warmup
        self.rounds = warmup + measured
        self.n_procs = max(1, min(client_procs, clients))
        self.round_budget = 60 + 200 * model_bytes * clients / 1e9
        self.sync = work / f"legacy-{label}-sync"
        self.out = work / f"legacy-{label}.json"
        self.server: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cpu_files: list[Path] = []
        self._server_cpu: list[float] = []
        self._clients_cpu: list[float] = []
        self._done = 0

    def __enter__(self) -> LegacyRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        work, label = self.work, self.label
        work.mkdir(parents=True, exist_ok=True)
        self.sync.mkdir(parents=True, exist_ok=True)
        for f in self.sync.iterdir():
            f.unlink()
        self.out.unlink(missing_ok=True)
        port = free_port()
        script = str(HERE / "flower_legacy.py")
        server = self.server = self.tracker.start(
            f"flower-legacy-{label}-server",
            [
                str(self.python),
                script,
                "server",
                "--port",
                str(port),
                "--model",
                str(self.model),
                "--rounds",
                str(self.rounds),
                "--clients",
                str(self.clients),
                "--out",
                str(self.out),
                "--sync-dir",
                str(self.sync),
            ],
            cwd=work,
        )
        self.procs = [server]
        wait_for(
            lambda: _listening(port) or server.poll() is not None,
            120,
            "the Flower server to listen",
        )
        if server.poll() is not None:
            raise RuntimeError(
                f"Flower legacy server exited with {server.returncode}; see {self.tracker.logs}"
            )
        counts = [
            self.clients // self.n_procs + (1 if i < self.clients % self.n_procs else 0)
            for i in range(self.n_procs)
        ]
        timeout = (
            600 + self.rounds * self.round_budget * 4
        )  # the other systems' rounds run in between
        for i, count in enumerate(counts):
            self.cpu_files.append(work / f"legacy-{label}-clients-{i}.cpu.json")
            self.cpu_files[-1].unlink(missing_ok=True)
            self.procs.append(
                self.tracker.start(
                    f"flower-legacy-{label}-clients-{i}",
                    [
                        str(self.python),
                        script,
                        "clients",
                        "--port",
                        str(port),
                        "--count",
                        str(count),
                        "--timeout",
                        str(timeout),
                        "--out",
                        str(self.cpu_files[-1]),
                    ],
                    cwd=work,
                )
            )

    def run_round(self) -> None:
        """The next round: returns once its aggregate_fit has ended."""
        assert self.server is not None, "start() first"
        r = self._done + 1
        if r > self.rounds:
            raise RuntimeError(f"all {self.rounds} rounds have run")
        server = self.server
        clients = self.procs[1:]
        before = cpu_seconds(server.pid), [cpu_seconds(p.pid) for p in clients]
        write_atomically(self.sync / f"go-{r}", repr(time.time() + 0.2))
        done = self.sync / f"done-{r}"

        def finished() -> bool:
            if server.poll() is not None and not done.exists():
                raise RuntimeError(
                    f"Flower legacy server exited with {server.returncode} in round {r}; see {self.tracker.logs}"
                )
            return done.exists()

        wait_for(
            finished,
            self.round_budget + (120 if r == 1 else 0),
            f"round {r} of Flower legacy",
            interval=0.01,
        )
        after = cpu_seconds(server.pid), [cpu_seconds(p.pid) for p in clients]
        if r > self.warmup:
            if before[0] is not None and after[0] is not None:
                self._server_cpu.append(after[0] - before[0])
            self._clients_cpu.append(
                sum(
                    a - b
                    for a, b in zip(after[1], before[1], strict=True)
                    if a is not None and b is not None
                )
            )
        self._done = r

    def finish(self) -> dict[str, Any]:
        assert self.server is not None, "start() first"
        while self._done < self.rounds:
            self.run_round()
        server = self.server
        wait_for(
            lambda: server.poll() is not None,
            120,
            "the Flower legacy server to finish",
            interval=0.1,
        )
        if server.returncode != 0 or not self.out.exists():
            raise RuntimeError(
                f"Flower legacy server exited with {server.returncode}; see its log in {self.tracker.logs}"
            )
        wait_for(
            lambda: all(p.poll() is not None for p in self.procs),
            60,
            "Flower legacy clients to exit",
            interval=0.2,
        )
        raw = json.loads(self.out.read_text())
        result = {
            "path": "legacy",
            "label": self.label,
            "clients": self.clients,
            "model_bytes": self.model_bytes,
            "client_processes": self.n_procs,
        }
        result.update(_summarise(raw["rounds"], self.warmup, self.clients, self.model_bytes))
        result["server_peak_rss_bytes"] = raw["server_peak_rss_bytes"]
        result["server_idle_rss_bytes"] = raw["server_idle_rss_bytes"]
        result["server_process"] = "start_server() process"
        # CPU of the measured rounds, from the start signal to the end of aggregate_fit.
        result["server_cpu_seconds_per_round"] = (
            statistics.fmean(self._server_cpu) if self._server_cpu else None
        )
        result["clients_cpu_seconds_per_round"] = (
            statistics.fmean(self._clients_cpu) if self._clients_cpu else None
        )
        result["server_cpu_seconds_total"] = raw["cpu_seconds"]
        return result

    def close(self) -> None:
        self.tracker.stop_pids([p.pid for p in self.procs if p.poll() is None])


def run_legacy(
    python: Path,
    model: Path,
    model_bytes: int,
    tracker: Tracker,
    work: Path,
    *,
    label: str,
    clients: int,
    warmup: int,
    measured: int,
    client_procs: int,
) -> dict[str, Any]:
    """Flower legacy on its own, every round right after the one before."""
    with LegacyRun(
        python,
        model,
        model_bytes,
        tracker,
        work,
        label=label,
        clients=clients,
        warmup=warmup,
        measured=measured,
        client_procs=client_procs,
    ) as run:
        run.start()
        return run.finish()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp, no connection made)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[1].endswith(want) and parts[3] == "0A":
                return True
    return False


class Deployment:
    """A running SuperLink with `clients` SuperNodes; runs the bench app with `flwr run`."""

    def __init__(self, python: Path, tracker: Tracker, work: Path, clients: int) -> None:
        self.python = python
        self.bin = python.parent
        self.tracker = tracker
        self.work = work
        self.clients = clients
        self.home = work / "flwr-home"
        self.port = 0
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes]] = []

    def _env(self) -> dict[str, str]:
        return self.tracker.env({"FLWR_HOME": str(self.home)}, path_first=str(self.bin))

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n'
            f'[superlink.bench]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        superlink = self.superlink = self.tracker.start(
            "flower-superlink",
            [
                str(self.bin / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            env=self._env(),
            cwd=self.work,
        )
        wait_for(
            lambda: _listening(self.port) or superlink.poll() is not None,
            120,
            "the SuperLink to listen",
        )
        if superlink.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {superlink.returncode}")
        for i in range(self.clients):
            runtime_port = free_port()
            self.supernodes.append(
                self.tracker.start(
                    f"flower-supernode-{i}",
                    [
                        str(self.bin / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{self.port}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(runtime_port),
                    ],
                    env=self._env(),
                    cwd=self.work,
                )
            )

    def wait_ready(self, timeout: float) -> float:
        """Wait until every SuperNode registered (its log names its node id) and its
        SuperExec started; returns the seconds waited."""
        t0 = time.monotonic()

        def ready() -> bool:
            for i, node in enumerate(self.supernodes):
                if node.poll() is not None:
                    raise RuntimeError(f"flower-supernode {i} exited with {node.returncode}")
                text = (self.tracker.logs / f"flower-supernode-{i}.log").read_text(errors="replace")
                if "SuperNode ID" not in text or "Starting Flower SuperExec" not in text:
                    return False
            return True

        wait_for(ready, timeout, "all SuperNodes to register", interval=0.5)
        return time.monotonic() - t0

    def run(self, phases: list[dict[str, Any]], *, budget: float) -> dict[str, dict[str, Any]]:
        """Run the bench app once over `phases` ([{label, model, model_bytes, rounds,
        warmup}], in order) and return each phase's numbers, or {"error": ...} for a
        phase that did not finish. One run, so only the first phase pays for installing
        the app on every SuperNode."""
        assert self.superlink is not None, "start() first"
        plan = self.work / "phases.json"
        plan.write_text(
            json.dumps(
                [
                    {"label": p["label"], "model": str(p["model"]), "rounds": p["rounds"]}
                    for p in phases
                ]
            )
        )
        out = self.work / "deployment-result.json"
        out.unlink(missing_ok=True)
        config = f'plan-path="{plan}" result-path="{out}" num-clients={self.clients}'
        superlink_idle = proc_status(self.superlink.pid).get("VmRSS", 0)
        self.tracker.forget_peaks()
        run = self.tracker.start(
            "flower-flwr-run",
            [str(self.bin / "flwr"), "run", str(APP_DIR), "bench", "--run-config", config],
            env=self._env(),
            cwd=self.work,
        )
        results: dict[str, dict[str, Any]] = {}
        done: set[str] = set()
        cpu_before = self.tracker.cpu_by_name()
        phase_started = time.time()
        deadline = time.monotonic() + budget
        seen_serverapp = False
        gone_since: float | None = None
        error = None
        while time.monotonic() < deadline and len(done) < len(phases):
            time.sleep(0.5)
            raw = _read_json(out)
            for phase in phases:
                label = phase["label"]
                if label in done or label not in raw.get("phases", {}):
                    continue
                # This phase just finished: its peaks and CPU, then reset for the next.
                self.tracker.sample()
                cpu_now = self.tracker.cpu_by_name()
                entry = raw["phases"][label]
                result = {
                    "path": "deployment",
                    "label": label,
                    "clients": self.clients,
                    "model_bytes": phase["model_bytes"],
                    "client_processes": f"{self.clients} SuperNodes",
                }
                result.update(
                    _summarise(entry["rounds"], phase["warmup"], self.clients, phase["model_bytes"])
                )
                superlink_peak = self.tracker.peak_of(self.superlink.pid)
                serverapp_peak = int(entry.get("serverapp_peak_rss_bytes", 0))
                clientapps = [
                    p
                    for p in self.tracker.peaks_named("flwr-clientapp")
                    if p.first_seen >= phase_started
                ]
                result.update(
                    {
                        "superlink_peak_rss_bytes": superlink_peak,
                        "serverapp_peak_rss_bytes": serverapp_peak,
                        "server_peak_rss_bytes": superlink_peak + serverapp_peak,
                        "server_idle_rss_bytes": superlink_idle
                        + int(entry.get("serverapp_idle_rss_bytes", 0)),
                        "server_process": "SuperLink + ServerApp processes (sum of peaks)",
                        "clientapp_peak_rss_bytes": max((p.hwm for p in clientapps), default=0),
                        "cpu_seconds_by_process": {
                            k: round(v - cpu_before.get(k, 0.0), 2)
                            for k, v in cpu_now.items()
                            if v - cpu_before.get(k, 0.0) > 0.05
                        },
                        "phase_wall_seconds": entry.get("wall_seconds"),
                        "server_cpu_seconds_per_round": (
                            cpu_now.get("flower-superlink", 0.0)
                            - cpu_before.get("flower-superlink", 0.0)
                            + float(entry.get("cpu_seconds", 0.0))
                        )
                        / max(1, int(phase["rounds"])),
                        "clients_cpu_seconds_per_round": sum(
                            cpu_now.get(k, 0.0) - cpu_before.get(k, 0.0)
                            for k in ("flwr-clientapp", "flower-supernode", "flower-superexec")
                        )
                        / max(1, int(phase["rounds"])),
                    }
                )
                results[label] = result
                done.add(label)
                cpu_before = cpu_now
                phase_started = time.time()
                superlink_idle = proc_status(self.superlink.pid).get("VmRSS", 0)
                self.tracker.reset_peak(self.superlink.pid)
            # A run that died: no ServerApp process left and no new phase for a while.
            alive = any(
                self.tracker._name_of(pid) == "flwr-serverapp" for pid in self.tracker.tagged_pids()
            )
            seen_serverapp = seen_serverapp or alive
            if seen_serverapp and not alive and len(done) < len(phases):
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > 15:
                    error = "the ServerApp process exited before finishing (the SuperLink ended the run; see flower-superlink.log)"
                    break
            else:
                gone_since = None
        if run.poll() is None:
            self.tracker.stop_pids([run.pid])
        for phase in phases:
            if phase["label"] not in results:
                results[phase["label"]] = {
                    "path": "deployment",
                    "label": phase["label"],
                    "error": error or f"did not finish within {budget:.0f}s",
                }
        return results

    def stop(self) -> None:
        pids = [
            p.pid for p in [*self.supernodes, self.superlink] if p is not None and p.poll() is None
        ]
        self.tracker.stop_pids(pids)
