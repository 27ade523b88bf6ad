"""The open round's model, serialized for pulls: each depth's prefix is cut into data
chunks once, by the first pull of that depth, and shared by every pull of it (pulls
that arrive meanwhile wait for the same chunks)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from torch import Tensor

from flextrain.aggregator.state import Aggregation
from flextrain.aggregator.worker import Worker
from flextrain.wire.tensors import Framed, Spec, frame_views, tensor_views


class Superseded(Exception):
    """The round whose model a pull wanted to serialize has closed."""


class ModelFrames:
    """Serialized prefixes of the open round's model, kept until every client of their
    depth has pulled them (or the round closes)."""

    def __init__(self, agg: Aggregation, worker: Worker, clients_at_depth: Mapping[int, int]) -> None:
        self._agg = agg
        self._worker = worker
        self._clients_at_depth = dict(clients_at_depth)
        self._encoded: dict[tuple[int, int], asyncio.Future[Framed]] = {}
        self._model_views: tuple[dict[str, Tensor], dict[str, tuple[Spec, memoryview]]] | None = None
        self._served: dict[tuple[int, int], set[str]] = {}

    async def prefix(self, number: int, depth: int) -> Framed:
        """The depth-`depth` prefix of round `number`'s model, serialized once per round
        and shared by every pull of that depth (also by pulls that arrive meanwhile).

        Raises:
            Superseded: round `number` closed before its model was serialized.
        """
        key = (number, depth)
        pending = self._encoded.get(key)
        if pending is None:
            # Both taken now: a round that closes meanwhile replaces the global state.
            model, names = self._agg.global_state, list(self._agg.expected_specs(depth))
            pending = self._worker.run(self._frame, number, model, names)
            self._encoded = {k: v for k, v in self._encoded.items() if k[0] == number}
            self._encoded[key] = pending
        try:
            # shield: a caller that gives up must not cancel the encode the others await
            return await asyncio.shield(pending)
        except Exception:
            if self._encoded.get(key) is pending:
                del self._encoded[key]  # let the next pull try again
            raise

    def served(self, number: int, depth: int, client_id: str) -> None:
        """`client_id` has its prefix of round `number`: once every client of its depth
        has it, the cache lets it go (the pulls still sending it hold their own
        reference; a retried pull serializes again)."""
        served = self._served.setdefault((number, depth), set())
        served.add(client_id)
        if len(served) >= self._clients_at_depth[depth]:
            self._encoded.pop((number, depth), None)

    def drop(self) -> None:
        """The round closed: its serialized model goes now (pulls still sending it keep
        their reference), not when the next round's first pull replaces it."""
        self._encoded, self._served = {}, {}
        self._model_views = None

    def _frame(self, number: int, model: dict[str, Tensor], names: list[str]) -> Framed:
        """Serialize the `names` prefix of `model`, the global state of round `number`.
        The raw views of the whole model are taken once and shared by every depth's
        prefix. Raises Superseded when that round has closed meanwhile: a closed round's
        model is handed to the next round's merge as scratch memory (see
        ``Aggregation.close_round``), so it is only read while it is current (this runs
        on the worker, as the close does)."""
        agg = self._agg
        if agg.round.number != number or agg.global_state is not model:
            raise Superseded(number)
        cached = self._model_views
        if cached is None or cached[0] is not model:
            specs, views = tensor_views(model, agg.compression)
            cached = (model, {s.name: (s, v) for s, v in zip(specs, views, strict=True)})
            self._model_views = cached
        picked = [cached[1][name] for name in names]
        return frame_views([s for s, _ in picked], [v for _, v in picked])
