"""Dynamic batching of concurrent forward passes: many visitors' images for one model in one call.

The dashboard shares one copy of each model between every browser session. When several sessions ask the same model
for a prediction at the same moment, :class:`DynamicBatcher` stacks their inputs along the first dimension, runs the
model once, and hands each caller back its own rows, as model servers batch dynamically (a small queue, a short wait).
On this machine's CPU one ResNet-18 forward at 128 px cost 20 ms for one image and 15, 13 and 12 ms per image in
batches of 4, 8 and 16 (one thread): batching raises throughput under load, it does not shorten a lone request.

How it runs, without a thread of its own: the calling threads (Streamlit's script threads) do the work. A caller
queues its input (:meth:`DynamicBatcher.submit`) and then waits for it (:meth:`DynamicBatcher.result`); while no batch
of that model is running, one waiting caller becomes the runner: it waits until the oldest queued input has waited
``max_wait_s`` or ``max_batch`` rows are queued, takes them, runs the model, and wakes everyone whose rows came back.
Inputs that queue while a batch runs form the next batch, so batches grow with the load. Having no worker thread
means nothing to start at import, nothing to stop at exit, and no thread inside a PyTorch kernel that the server's
shutdown (:mod:`medrobust.dashboard.hosting`) does not already wait for.

Answers equal one-at-a-time forwards up to floating-point batch effects: oneDNN may choose another convolution
algorithm for another batch size, so fp32 logits can differ in the last bits (up to about 1e-5 absolute for the
shipped ResNet-18s, far below the 0.1 percentage point a card shows). Rows never mix: BatchNorm is folded into the
convolutions of the shared models, which are in eval mode, so one image's logits do not depend on the others.

:func:`predict_many` is the entry point for the dashboard: the probabilities of several (model, input) pairs, all
queued before any is waited for, so the four models of a card row fill their batches together.
:func:`batching_enabled` reads ``MEDROBUST_BATCHING`` (:mod:`medrobust.settings`) at call time, so it can be
measured on and off.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from medrobust import settings

__all__ = ["BatchStats", "DynamicBatcher", "batcher_for", "batching_enabled", "predict_many"]


@dataclass
class BatchStats:
    """What a batcher has done so far: batches run and rows answered (for tests and benchmarks)."""

    batches: int = 0
    rows: int = 0
    largest: int = 0


@dataclass(eq=False)
class _Request:
    """One caller's input and, once its batch has run, its own rows of the answer (or the batch's error)."""

    x: torch.Tensor
    queued_at: float
    done: bool = False
    result: torch.Tensor | None = field(default=None, repr=False)
    error: BaseException | None = None


class DynamicBatcher:
    """Run concurrent calls of ``fn`` as one call on their inputs stacked along the first dimension.

    Parameters
    ----------
    fn
        A function of a batch ``(N, ...)`` that returns one row per input row, ``(N, ...)``, each row depending on its
        own input only (a model in eval mode). It runs in one of the calling threads.
    max_batch
        The most rows one call of ``fn`` gets (a single larger request still runs, alone).
    max_wait_s
        How long the oldest queued input may wait for others before its batch runs.

    Notes
    -----
    Thread-safe. Inputs of different shapes or dtypes queue apart (only equal shapes can be stacked). At most one batch
    per batcher runs at a time: the next one forms meanwhile.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int = 16,
                 max_wait_s: float = 0.002) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}.")
        self._fn = fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self._cond = threading.Condition()
        self._queues: dict[tuple, list[_Request]] = {}
        self._running = False
        self.stats = BatchStats()

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        return tuple(x.shape[1:]), x.dtype, x.device

    def submit(self, x: torch.Tensor) -> _Request:
        """Queue ``x`` (``(n, ...)``, n >= 1) and return the handle to pass to :meth:`result`."""
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"Expected a batch of at least one input, got shape {tuple(x.shape)}.")
        req = _Request(x=x, queued_at=time.monotonic())
        with self._cond:
            self._queues.setdefault(self._key(x), []).append(req)
            self._cond.notify_all()
        return req

    def result(self, req: _Request) -> torch.Tensor:
        """Wait for the rows of ``req`` (running batches in this thread while no other thread does)."""
        with self._cond:
            while not req.done:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True  # this thread forms and runs the next batch; the others wait
                batch = self._take_batch()
                if not batch:  # pragma: no cover - a request is queued until a runner takes it
                    self._running = False
                    raise RuntimeError("A queued input disappeared from the batcher.")
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)``, batched with whatever other threads ask for at the same moment."""
        return self.result(self.submit(x))

    def _take_batch(self) -> list[_Request]:
        """With the lock held: wait for the oldest queue's deadline (or a full batch), then take its batch."""
        while True:
            queues = [q for q in self._queues.values() if q]
            if not queues:
                return []
            queue = min(queues, key=lambda q: q[0].queued_at)
            rows = sum(int(r.x.shape[0]) for r in queue)
            left = queue[0].queued_at + self.max_wait_s - time.monotonic()
            if rows >= self.max_batch or left <= 0:
                break
            self._cond.wait(left)
        batch, rows = [], 0
        while queue and (not batch or rows + int(queue[0].x.shape[0]) <= self.max_batch):
            req = queue.pop(0)
            batch.append(req)
            rows += int(req.x.shape[0])
        return batch

    def _run(self, batch: list[_Request]) -> None:
        """Run ``fn`` on the stacked inputs (without the lock) and give every request its rows."""
        sizes = [int(r.x.shape[0]) for r in batch]
        try:
            x = batch[0].x if len(batch) == 1 else torch.cat([r.x for r in batch])
            out = self._fn(x)
            if out.shape[0] != sum(sizes):
                raise RuntimeError(f"The batched function returned {out.shape[0]} rows for {sum(sizes)} inputs.")
            for r, part in zip(batch, torch.split(out, sizes)):
                r.result = part
        except BaseException as exc:  # every caller of the batch gets the error, not only the runner
            for r in batch:
                r.error = exc
        for r in batch:
            r.done = True
        self.stats.batches += 1
        self.stats.rows += sum(sizes)
        self.stats.largest = max(self.stats.largest, sum(sizes))


_BATCHERS: "weakref.WeakKeyDictionary[torch.nn.Module, DynamicBatcher]" = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def _softmax_forward(model_ref: "weakref.ReferenceType[torch.nn.Module]") -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        model = model_ref()
        if model is None:  # pragma: no cover - the batcher dies with its model
            raise RuntimeError("The model of this batcher was released.")
        with torch.no_grad():
            return torch.softmax(model(x).float(), dim=1)

    return forward


def batcher_for(model: torch.nn.Module) -> DynamicBatcher:
    """The process-wide batcher of ``model``'s softmax probabilities (made on first use, released with the model).

    The batcher holds the model weakly, so a model set dropped from Streamlit's cache takes its batchers with it.
    """
    with _REGISTRY_LOCK:
        b = _BATCHERS.get(model)
        if b is None:
            b = DynamicBatcher(_softmax_forward(weakref.ref(model)), max_batch=settings.batch_max_size(),
                               max_wait_s=settings.batch_wait_ms() / 1000.0)
            _BATCHERS[model] = b
        return b


def batching_enabled() -> bool:
    """``MEDROBUST_BATCHING`` (default on): whether :func:`predict_many` batches across sessions."""
    return settings.batching()


def predict_many(pairs: Sequence[tuple[torch.nn.Module, torch.Tensor]], *, batched: bool | None = None,
                 ) -> list[torch.Tensor]:
    """Softmax probabilities ``(n, K)`` of every (model, input) pair, in order.

    Parameters
    ----------
    pairs
        Models in eval mode and their inputs ``(n, C, H, W)``; several models may share one input tensor.
    batched
        Go through each model's :class:`DynamicBatcher` (all pairs queued first, then collected), or call each model
        in turn. Default: :func:`batching_enabled`.

    Returns
    -------
    list of torch.Tensor
        One float32 ``(n, K)`` tensor per pair, computed under ``torch.no_grad``.
    """
    if batched is None:
        batched = batching_enabled()
    if not batched:
        with torch.no_grad():
            return [torch.softmax(model(x).float(), dim=1) for model, x in pairs]
    batchers = [batcher_for(model) for model, _ in pairs]
    handles = [b.submit(x) for b, (_, x) in zip(batchers, pairs)]  # all queued before any is waited for
    return [b.result(h) for b, h in zip(batchers, handles)]
