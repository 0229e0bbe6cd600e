"""Fresh training samples rendered in background processes while SFT runs (``train_sft --live-workers N``).

The pre-tokenised cache is a fixed set: on 23 training photos a long run memorises it (held-out flip NLL
stayed flat while the training batches' fell, research/LOG.md). On a machine with many cores the
edits can instead be rendered during training: ``N`` worker processes each run their own seeded
``training.data.suite.stream`` and hand rendered pixels to the trainer, which encodes them with the bundle's
image tokenizer (on its GPU when it has one) and adds them to the pool it samples batches from.

Workers are started with ``spawn`` so that they never inherit a CUDA context. Live samples depend on
process timing, so a run that uses them is not bit-reproducible; a seed still fixes each worker's stream.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Sequence

import numpy as np

CHUNK = 32  # samples per hand-over: fewer, larger pickles keep the queue cheap
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _worker(seed: int, corpus: str, scales: tuple[float, ...], phrasings: int, out: mp.Queue, parent: int) -> None:
    import torch

    torch.set_num_threads(1)
    from training.data.pretokenize import raw_records
    from training.data.suite import stream

    gen = stream("train", seed=seed, corpus=corpus, scales=scales)
    rng = np.random.default_rng([seed, 7])
    while True:
        chunk = raw_records([next(gen) for _ in range(CHUNK)], phrasings, rng)
        while True:
            try:
                out.put(chunk, timeout=5)
                break
            except queue.Full:
                # a killed trainer cannot terminate us: stop once it is gone (we were re-parented)
                if os.getppid() != parent:
                    out.cancel_join_thread()  # nobody will read what is still buffered
                    return


class LiveSamples:
    """``workers`` processes rendering training samples; ``drain()`` returns what they have rendered so far."""

    def __init__(self, workers: int, seed: int, corpus: str = "data/corpus",
                 scales: Sequence[float] = (0.25, 0.35, 0.45, 0.6, 0.8, 1.0), phrasings: int = 4,
                 max_ready: int = 8192):
        if workers < 1:
            raise ValueError("live samples need at least one worker process")
        ctx = mp.get_context("spawn")
        # At most ~2 * max_ready samples wait (queue + received); then the workers block, so on a small
        # machine they render only about as fast as training takes samples instead of taking its cores.
        self.max_ready = max_ready
        self.queue: mp.Queue = ctx.Queue(maxsize=max(2, max_ready // CHUNK))
        # seeds far from the pre-tokenised cache's (seed * 100_003 + shard) so the streams never repeat it
        self.procs = [
            ctx.Process(target=_worker, args=(10_000_019 * (seed + 1) + i, corpus, tuple(scales), phrasings,
                                              self.queue, os.getpid()), daemon=True)
            for i in range(workers)
        ]
        # one thread per worker (numpy/BLAS would otherwise start one per core in each of them)
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
        try:
            for p in self.procs:
                p.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._ready: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        # Read the pipe continuously: a worker's chunk only moves while someone reads, so reading just at
        # hand-over time left the workers blocked most of the time.
        while not self._stop.is_set():
            with self._lock:
                full = len(self._ready) >= self.max_ready
            if full:
                time.sleep(0.05)
                continue
            try:
                chunk = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            with self._lock:
                self._ready.extend(chunk)

    def drain(self, wait_for: int = 0, timeout: float = 600.0) -> list[dict]:
        """Rendered raw records (``pretokenize.raw_records`` format) received so far, at least ``wait_for``
        of them (blocking up to ``timeout`` seconds for those)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self._ready) >= wait_for:
                    out, self._ready = self._ready, []
                    return out
                have = len(self._ready)
            if not any(p.is_alive() for p in self.procs):
                raise RuntimeError("all live-sample workers died; see their traceback above")
            if time.monotonic() > deadline:
                raise TimeoutError(f"live-sample workers rendered {have} of {wait_for} samples in {timeout:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(timeout=10)
        self._thread.join(timeout=5)
        self.queue.cancel_join_thread()
