"""ServerApp: FedAvg over all SuperNodes, one phase per model listed in `plan-path`,
timestamping each round (configure_train start -> aggregate_train end) into
`result-path` (JSON, rewritten after every phase so a failure keeps earlier phases)."""

import contextlib
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


class TimedFedAvg(FedAvg):
    """FedAvg that records when each round starts and when its merge ends."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rounds: dict[int, dict[str, float]] = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds[server_round] = {"start": time.time()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        entry = self.rounds[server_round]
        entry["replies_in"] = time.time()
        entry["replies"] = sum(1 for m in replies if m.has_content() and not m.has_error())
        entry["failures"] = len(replies) - entry["replies"]
        out = super().aggregate_train(server_round, replies)
        entry["end"] = time.time()
        return out


def _write(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    clients = int(cfg["num-clients"])
    phases = json.loads(Path(str(cfg["plan-path"])).read_text())
    out = Path(str(cfg["result-path"]))
    result: dict = {"phases": {}}
    for phase in phases:
        with np.load(phase["model"]) as data:
            arrays = [data[k] for k in data.files]
        model_bytes = int(sum(a.nbytes for a in arrays))
        record = ArrayRecord(arrays)
        del arrays
        _reset_peak()
        idle = _status("VmRSS")
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )
        started = time.time()
        cpu0 = time.process_time()
        strategy.start(grid=grid, initial_arrays=record, num_rounds=int(phase["rounds"]))
        result["phases"][phase["label"]] = {
            "rounds": strategy.rounds,
            "model_bytes": model_bytes,
            "serverapp_idle_rss_bytes": idle,
            "serverapp_peak_rss_bytes": _status("VmHWM"),
            "wall_seconds": time.time() - started,
            "cpu_seconds": time.process_time() - cpu0,
        }
        del record, strategy
        _write(out, result)
    result["done"] = True
    _write(out, result)
