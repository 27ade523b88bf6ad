"""Raw loopback gRPC throughput of this machine: the physical ceiling of the benchmark.

A minimal server (its own process, grpc.aio like the aggregator, no protobuf: raw bytes
messages) streams N MiB in 2 MiB chunks to a sync client (server-streaming, the
direction of PullModel) and takes N MiB from it (client-streaming, the direction of
PushUpdate), with one stream and with many concurrent streams. Both processes keep
freed memory for reuse as FlexTrain's processes do (flextrain.allocator): without it
gRPC's own 2 MiB messages page-fault afresh and the ceiling reads up to ~40 % lower.

Also the raw version of a round's traffic (raw_rounds): the ceiling for that traffic.

    python -m benchmarks.aggregation.loopback --serve --port-file FILE   # the server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from benchmarks.aggregation.procs import write_atomically
from flextrain.allocator import retain_freed_memory

CHUNK = 2 * 1024 * 1024
MIB = 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", 8 * MIB),
    ("grpc.max_send_message_length", 8 * MIB),
]
_SERVICE = "bench.Raw"


def _identity(b: bytes) -> bytes:
    return b


class Chunks:
    """What raw loopback sends: `CHUNK`-sized bytes objects. With `distinct`, a model's
    transfer reads as much distinct memory as it moves (one object per chunk of the
    largest transfer, each written once), as a real model transfer does; otherwise one
    cache-resident chunk is sent again and again, the most favourable case for gRPC."""

    def __init__(self, distinct: bool) -> None:
        self.distinct = distinct
        self._pool: list[bytes] = []
        self._tails: dict[int, bytes] = {}

    def __call__(self, nbytes: int) -> Iterator[bytes]:
        count = -(-nbytes // CHUNK)
        while len(self._pool) < (count if self.distinct else 1):
            self._pool.append(bytes([len(self._pool) % 251 + 1]) * CHUNK)
        for i in range(count):
            size = min(CHUNK, nbytes - i * CHUNK)
            chunk = self._pool[i if self.distinct else 0]
            if size < CHUNK:
                tail = self._tails.get(size)
                if tail is None:
                    tail = self._tails[size] = chunk[:size]
                chunk = tail
            yield chunk


# -- server -------------------------------------------------------------------------


async def _serve(port_file: Path) -> None:
    retain_freed_memory()
    sources = {False: Chunks(False), True: Chunks(True)}

    async def download(request: bytes, context: Any) -> AsyncIterator[bytes]:
        total, _, mode = request.decode().partition(" ")  # "<bytes>[ distinct]"
        for chunk in sources[mode == "distinct"](int(total)):
            yield chunk

    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        total = 0
        async for data in requests:
            total += len(data)
        return str(total).encode()

    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Download": grpc.unary_stream_rpc_method_handler(download, _identity, _identity),
            "Upload": grpc.stream_unary_rpc_method_handler(upload, _identity, _identity),
        },
    )
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    write_atomically(port_file, str(port))
    await server.wait_for_termination()


# -- client -------------------------------------------------------------------------


class RawClient:
    """Raw bytes down and up; `chunks` is what it uploads (each client its own, as each
    trainer pushes its own tensors)."""

    def __init__(self, port: int, chunks: Chunks | None = None) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        self._down = self.channel.unary_stream(f"/{_SERVICE}/Download", _identity, _identity)
        self._up = self.channel.stream_unary(f"/{_SERVICE}/Upload", _identity, _identity)
        self._chunks = chunks or Chunks(False)

    def download(self, nbytes: int) -> int:
        got = 0
        request = f"{nbytes}{' distinct' if self._chunks.distinct else ''}".encode()
        for data in self._down(request, timeout=300):
            got += len(data)
        if got != nbytes:
            raise RuntimeError(f"download moved {got} of {nbytes} bytes")
        return got

    def upload(self, nbytes: int) -> int:
        got = int(self._up(self._chunks(nbytes), timeout=300).decode())
        if got != nbytes:
            raise RuntimeError(f"upload moved {got} of {nbytes} bytes")
        return got

    def close(self) -> None:
        self.channel.close()


def _parallel(clients: list[RawClient], op: str, per_stream: int) -> float:
    """Seconds for every client to move `per_stream` bytes at once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients) + 1)

    def work(c: RawClient) -> None:
        try:
            barrier.wait(timeout=60)
            getattr(c, op)(per_stream)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    barrier.wait(timeout=60)
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=600)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"loopback {op} failed: {errors[0]!r}")
    return elapsed


def measure(port: int, *, mib: int, streams: int, repeats: int) -> dict[str, Any]:
    """MiB/s for download/upload with 1 stream and with `streams` concurrent streams."""
    retain_freed_memory()  # this (the client's) process, like the server's
    nbytes = mib * MIB
    single = RawClient(port)
    many = [RawClient(port) for _ in range(streams)]
    out: dict[str, Any] = {
        "mib_per_measurement": mib,
        "streams": streams,
        "repeats": repeats,
        "chunk_bytes": CHUNK,
    }
    try:
        single.download(8 * MIB)  # warm up connections
        single.upload(8 * MIB)
        _parallel(many, "download", MIB)
        for op in ("download", "upload"):
            rates = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                getattr(single, op)(nbytes)
                rates.append(nbytes / MIB / (time.perf_counter() - t0))
            out[f"{op}_1_stream_mib_s"] = statistics.median(rates)
            out[f"{op}_1_stream_all"] = rates
            per = max(CHUNK, nbytes // streams)
            rates = [per * streams / MIB / _parallel(many, op, per) for _ in range(repeats)]
            out[f"{op}_{streams}_streams_mib_s"] = statistics.median(rates)
            out[f"{op}_{streams}_streams_all"] = rates
    finally:
        single.close()
        for c in many:
            c.close()
    keys = [k for k in out if k.endswith("_mib_s")]
    out["ceiling_mib_s"] = max(out[k] for k in keys)
    out["ceiling_from"] = max(keys, key=lambda k: out[k])
    return out


# -- a round's traffic, raw ---------------------------------------------------------
#
# The same traffic as one aggregation round, with nothing but gRPC: every client pulls
# its bytes, then pushes as many back, all clients at once, spread over the same number
# of processes (threads inside) as the benchmark's fake trainers. The ratio of this
# round's time to the aggregator's is the share of raw loopback the aggregator keeps for
# that exact traffic: everything it does beyond moving bytes (framing, checks, merge,
# orchestration) is the difference.


def _round_client(
    port: int,
    sizes: list[int],
    repeats: int,
    work: Path,
    index: int,
    distinct: bool,
    train_seconds: float = 0.0,
) -> None:
    """One client process of raw_rounds(): a thread per size; files in `work` sync the
    processes (ready-P-R -> go-R with the start time -> done-P-R with end times)."""
    retain_freed_memory()
    clients = [RawClient(port, Chunks(distinct)) for _ in sizes]
    try:
        for c in clients:
            c.download(CHUNK)  # connect before the clock starts
        for r in range(repeats):
            (work / f"ready-{index}-{r}").write_text("")
            go = work / f"go-{r}"
            while not go.exists():  # it names a start time 0.2 s ahead (see RawRun.run_round)
                time.sleep(0.02)
            cpu = time.process_time()
            ends = _raw_round(clients, sizes, float(go.read_text()), train_seconds)
            cpu = time.process_time() - cpu
            write_atomically(
                work / f"done-{index}-{r}", json.dumps({"ends": ends, "cpu_seconds": cpu})
            )
        # Connections stay up until no process is in a measured round.
        deadline = time.monotonic() + 600
        while not (work / "teardown").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for c in clients:
            c.close()


def _raw_round(
    clients: list[RawClient], sizes: list[int], start: float, train_seconds: float = 0.0
) -> list[float]:
    """At wall-clock `start`, every client pulls, sleeps `train_seconds` (simulated
    local training), then pushes its size; their end times."""
    ends: list[float] = []
    errors: list[BaseException] = []

    def one(c: RawClient, n: int) -> None:
        try:
            time.sleep(max(0.0, start - time.time()))
            c.download(n)
            time.sleep(train_seconds)
            c.upload(n)
            ends.append(time.time())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=(c, n), daemon=True)
        for c, n in zip(clients, sizes, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    if errors or len(ends) != len(sizes):
        raise RuntimeError(f"raw round failed: {errors[:1]!r}")
    return ends


class RawRun:
    """Raw rounds of one traffic, round by round (so that they can alternate with the
    aggregator's rounds of the same traffic): client i pulls then pushes sizes[i] bytes;
    the clients are threads of `processes` processes (started with `start(argv)`, which
    returns a Popen). ``start``, ``run_round`` for each round (the first ``warmup`` are
    not counted), ``finish`` for the numbers; ``close`` stops the processes.
    `server_cpu` reads the server process's CPU seconds, for the CPU a round costs
    there. `distinct`: see :class:`Chunks` (a model's bytes are distinct memory; False
    re-sends one chunk)."""

    def __init__(
        self,
        port: int,
        sizes: list[int],
        *,
        processes: int,
        rounds: int,
        warmup: int,
        work: Path,
        start: Callable[[list[str]], Any],
        server_cpu: Callable[[], float | None] = lambda: None,
        distinct: bool = True,
        train_seconds: float = 0.0,
    ) -> None:
        self.port, self.sizes, self.rounds, self.warmup, self.work = (
            port,
            sizes,
            rounds,
            warmup,
            work,
        )
        self.train_seconds = train_seconds
        self._start, self._server_cpu, self.distinct = start, server_cpu, distinct
        self.groups = [sizes[i::processes] for i in range(min(processes, len(sizes)))]
        self.procs: list[Any] = []
        self.seconds: list[float] = []
        self.client_cpu: list[float] = []
        self.server: list[float] = []
        self._done = 0

    def __enter__(self) -> RawRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        work = self.work
        work.mkdir(parents=True, exist_ok=True)
        for f in work.iterdir():
            f.unlink()
        spec = work / "sizes.json"
        spec.write_text(json.dumps(self.groups))
        self.procs = [
            self._start(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.aggregation.loopback",
                    "--round-client",
                    str(i),
                    "--port",
                    str(self.port),
                    "--spec",
                    str(spec),
                    "--repeats",
                    str(self.rounds),
                    "--train-seconds",
                    repr(self.train_seconds),
                    *(["--distinct"] if self.distinct else []),
                ]
            )
            for i in range(len(self.groups))
        ]

    def run_round(self) -> None:
        r = self._done
        if r >= self.rounds:
            raise RuntimeError(f"all {self.rounds} raw rounds have run")
        work, n = self.work, len(self.groups)
        _wait_files(work, [f"ready-{i}-{r}" for i in range(n)], self.procs)
        begin = time.time() + 0.2
        before = self._server_cpu()
        write_atomically(work / f"go-{r}", repr(begin))
        _wait_files(work, [f"done-{i}-{r}" for i in range(n)], self.procs)
        after = self._server_cpu()
        done = [json.loads((work / f"done-{i}-{r}").read_text()) for i in range(n)]
        end = max(max(d["ends"]) for d in done)
        if r >= self.warmup:
            self.seconds.append(end - begin)
            self.client_cpu.append(sum(d["cpu_seconds"] for d in done))
            if before is not None and after is not None:
                self.server.append(after - before)
        self._done = r + 1

    def finish(self) -> dict[str, Any]:
        while self._done < self.rounds:
            self.run_round()
        (self.work / "teardown").write_text("")
        seconds = self.seconds
        total = 2 * sum(self.sizes)
        rates = [total / MIB / s for s in seconds]
        return {
            "clients": len(self.sizes),
            "processes": len(self.groups),
            "bytes_per_round": total,
            "round_seconds": seconds,
            "round_seconds_best": min(seconds),
            "round_seconds_median": statistics.median(seconds),
            "mib_s_best": max(rates),
            "mib_s_median": statistics.median(rates),
            "distinct": self.distinct,
            # CPU of the measured rounds (the clients' includes their waiting for the start).
            "clients_cpu_seconds_per_round": statistics.fmean(self.client_cpu),
            "server_cpu_seconds_per_round": statistics.fmean(self.server) if self.server else None,
        }

    def close(self) -> None:
        if self.work.exists():
            (self.work / "teardown").write_text("")
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def raw_rounds(
    port: int,
    sizes: list[int],
    *,
    processes: int,
    repeats: int,
    work: Path,
    start: Callable[[list[str]], Any],
    server_cpu: Callable[[], float | None] = lambda: None,
    distinct: bool = True,
) -> dict[str, Any]:
    """`repeats` raw rounds on their own after one warm-up round (see :class:`RawRun`)."""
    with RawRun(
        port,
        sizes,
        processes=processes,
        rounds=repeats + 1,
        warmup=1,
        work=work,
        start=start,
        server_cpu=server_cpu,
        distinct=distinct,
    ) as run:
        run.start()
        return run.finish()


def _wait_files(work: Path, names: list[str], procs: list[Any], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not all((work / n).exists() for n in names):
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError("a raw round client exited with an error (see its log)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"raw round: timed out waiting for {names}")
        time.sleep(0.01)  # the round's end is the clients' own timestamp, not when this sees it


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help="run the server")
    p.add_argument("--port-file", type=Path, help="--serve: write the bound port here")
    p.add_argument(
        "--round-client", type=int, metavar="INDEX", help="run client process INDEX of raw_rounds()"
    )
    p.add_argument("--port", type=int)
    p.add_argument("--spec", type=Path, help="--round-client: JSON list of each process's sizes")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--distinct", action="store_true", help="--round-client: send distinct memory (see Chunks)"
    )
    p.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="--round-client: sleep between pull and push",
    )
    args = p.parse_args(argv)
    if args.serve and args.port_file:
        asyncio.run(_serve(args.port_file))
        return 0
    if args.round_client is not None and args.port and args.spec:
        sizes = json.loads(args.spec.read_text())[args.round_client]
        _round_client(
            args.port,
            sizes,
            args.repeats,
            args.spec.parent,
            args.round_client,
            args.distinct,
            args.train_seconds,
        )
        return 0
    p.error(
        "use --serve --port-file FILE, or --round-client N --port P --spec FILE (the benchmark starts these)"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
