"""Cluster DNS for the test control plane: `<service>.<namespace>.svc[.cluster.local]`
answered with the addresses of the Service's ready endpoints (the node agent's lookup),
the way a headless Service resolves.

Processes reach it through gRPC's own resolver with an explicit DNS server:
`dns://127.0.0.1:<port>/<service>.<namespace>.svc:<port>`. The operator is pointed at it
with `FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS=dns://127.0.0.1:<port>/{service}.{namespace}.svc:{port}`,
so the trainer pods' `FLEXTRAIN_AGGREGATOR` (rendered from the same template) and the
operator's own status reads both resolve through the cluster, with nothing rewritten.

Only what that needs is implemented: one question per UDP query, A records, an empty
answer for other types of a known name, NXDOMAIN otherwise.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

#: (service, namespace) -> IPv4 addresses of its ready endpoints.
Lookup = Callable[[str, str], list[str]]

TYPE_A = 1
NOERROR, NXDOMAIN, SERVFAIL = 0, 3, 2


def parse_service(name: str) -> tuple[str, str] | None:
    labels = name.rstrip(".").lower().split(".")
    if labels[-2:] == ["cluster", "local"]:
        labels = labels[:-2]
    if len(labels) == 3 and labels[2] == "svc":
        return labels[0], labels[1]
    return None


def _question(packet: bytes) -> tuple[str, int, int]:
    """(name, type, end offset of the question)."""
    labels, i = [], 12
    while True:
        length = packet[i]
        if length == 0:
            i += 1
            break
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(packet[i + 1 : i + 1 + length].decode("ascii", "replace"))
        i += 1 + length
    qtype, _qclass = struct.unpack("!HH", packet[i : i + 4])
    return ".".join(labels), qtype, i + 4


def answer(packet: bytes, lookup: Lookup) -> bytes:
    query_id, _flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        return struct.pack("!HHHHHH", query_id, 0x8180 | SERVFAIL, 0, 0, 0, 0)
    name, qtype, end = _question(packet)
    question = packet[12:end]
    service = parse_service(name)
    addresses: list[str] = []
    rcode = NXDOMAIN
    if service is not None:
        try:
            addresses = lookup(*service)
            rcode = NOERROR
        except LookupError:
            rcode = NXDOMAIN
        except Exception:  # the API server is down or refused: let the client retry
            rcode = SERVFAIL
    records = b""
    if qtype == TYPE_A:
        for address in addresses:
            records += struct.pack("!HHHIH", 0xC00C, TYPE_A, 1, 1, 4) + socket.inet_aton(address)
    else:
        addresses = []
    header = struct.pack("!HHHHHH", query_id, 0x8180 | rcode, 1, len(addresses), 0, 0)
    return header + question + records


class DnsServer:
    """A UDP DNS server on 127.0.0.1 in a daemon thread."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="cluster-dns", daemon=True)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):
                self.sock.sendto(answer(packet, self.lookup), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
