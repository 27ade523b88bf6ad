"""python -m benchmarks.operator.agent KUBECONFIG WORKDIR NODE [NODE ...]

The node agent of the cluster tests (tests/cluster/node_agent.py, status mode: every pod
the scheduler binds to one of NODE becomes Running and Ready; the nodes' leases are
renewed; cluster DNS for Services) in a process of its own, so that its work (a watch
on every pod, a status PATCH per pod) does not share the benchmark process that
timestamps what it watches. Prints `agent: ready dns=HOST:PORT`; stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from kubernetes import config

from tests.cluster.node_agent import NodeAgent

READY = "agent: ready "


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit(__doc__)
    kubeconfig, workdir, *nodes = argv
    api = config.new_client_from_config(config_file=kubeconfig)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent = NodeAgent(api, nodes, Path(workdir), mode="status").start()
    print(f"{READY}dns={agent.dns.authority}", flush=True)
    try:
        stop.wait()
    finally:
        agent.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
