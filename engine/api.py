"""``engine.edit``: one photo + one instruction -> a stream of events for N candidate edits.

Prepares the image (``image_io.prepare_image``), encodes it with the bundle's image tokenizer, builds
the prompt (``layout``), runs the sampler and turns its tokens into events: ``Text`` deltas of the
reasoning, ``ImageRow`` per finished row, ``Preview`` after the first row and then every
``preview_every`` rows (rows not generated yet are filled with the source image's codes, so a preview
looks like the photo being repainted top down), ``Done`` per candidate (with the edit also rendered at the
photo's own resolution, ``engine.render``, unless ``full_resolution=False``), ``Error`` for bad input or
a failure.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.bundle import transpose_default
from engine.events import Done, Error, Event, ImageRow, Preview, Text, Understood
from engine.layout import build_prompt, parse_generation, special_ids
from engine.sampler import SAMPLING_DEFAULTS, PromptTooLong, fp16_default, make_guidance, num_threads, sample

# Most tokens of a typical edit are copies of the source: guess up to this many per forward pass
# (``engine.drafts``; the sampler feeds fewer when the guesses keep missing).
DEFAULT_SPECULATE = 16

MAX_CANDIDATES = 64
SMALL_VQ_PARAMS = 50_000_000  # image tokenizers below this run on one thread on CPU (see _vq_threads)


def _vq_threads(bundle: Any) -> int | None:
    """Torch threads for the image tokenizer's encode / decode: 1 for a small one on CPU, else unchanged.

    The same reasoning as the sampler's one-thread decoding: on a small machine shared with other work a
    second thread makes a small tokenizer's many small ops wait (``benchmarks.edit_latency`` shows it),
    and previews decode up to H/preview_every times per edit.
    """
    vq = bundle.vq
    if not isinstance(vq, torch.nn.Module):
        return None
    p = next(vq.parameters(), None)
    if p is None or p.device.type != "cpu":
        return None
    return 1 if sum(q.numel() for q in vq.parameters()) < SMALL_VQ_PARAMS else None


def _check_args(instruction: Any, n: int, temperature: float, top_k: int, top_p: float, cfg_text: float,
                cfg_image: float, preview_every: int) -> str | None:
    """A polite message for the first bad argument, or None."""
    if not isinstance(instruction, str) or not instruction.strip():
        return "Please type an instruction describing the edit (for example: “make the photo grayscale”)."
    if not 1 <= int(n) <= MAX_CANDIDATES:
        return f"The number of candidates must be between 1 and {MAX_CANDIDATES} (got {n})."
    if temperature < 0:
        return f"Temperature must be 0 (greedy) or positive (got {temperature})."
    if top_k < 0:
        return f"top-k must be 0 (off) or positive (got {top_k})."
    if not 0 < top_p <= 1:
        return f"top-p must be in (0, 1] (got {top_p})."
    if cfg_text <= 0 or cfg_image <= 0:
        return "Guidance scales must be positive (1 = off)."
    if preview_every < 0:
        return f"preview_every must be 0 (no previews) or positive (got {preview_every})."
    return None


def edit(
    bundle: Any,
    image: Any,
    instruction: str,
    n: int = 4,
    think: bool = False,
    seed: int | None = None,
    temperature: float = SAMPLING_DEFAULTS["temperature"],
    top_k: int = int(SAMPLING_DEFAULTS["top_k"]),
    top_p: float = SAMPLING_DEFAULTS["top_p"],
    cfg_text: float = 1.0,
    cfg_image: float = 1.0,
    preview_every: int = 2,
    max_new_tokens: int | None = None,
    cancel: threading.Event | None = None,
    fp16: bool | None = None,
    speculate: int = DEFAULT_SPECULATE,
    full_resolution: bool = True,
    understand: bool = True,
    transpose: bool | None = None,
) -> Iterator[Event]:
    """Edit ``image`` (path, bytes or PIL) as ``instruction`` says; yields ``engine.events`` events.

    Candidate i uses seed ``seed + i`` (``seed`` drawn at random when None). Order per candidate:
    ``Text``* (think mode) → (``ImageRow``, sometimes ``Preview``)* → ``Done``. Errors are yielded as
    ``Error`` events, never raised. When ``cancel`` is set the stream ends early without ``Done`` for
    unfinished candidates. Timings in ``Done.timings`` (seconds from the call): ``prepare``,
    ``first_token``, ``first_preview``, ``total``; plus ``tokens_per_s``.
    ``fp16``: decoding steps read half-precision copies of the weights (``engine.sampler``; exact for
    bfloat16-stored bundles); None: when ``sampler.fp16_default`` says so (a small float32 LM on a CPU).
    ``speculate``: up to this many tokens per forward pass, guessed from the source image and kept only
    where the model picks them anyway (``engine.drafts``): same edits, faster where the output copies
    the source (object edits, flips); 0 decodes one token per pass.
    ``full_resolution``: each ``Done`` also carries ``full``, the edit rendered at the resolution of the
    photo as given (``engine.render.render_full``: CPU work after the candidate's decode, timed as
    ``timings["render"]``), and ``render``, its provenance. False skips it (and decodes a large JPEG at a
    reduced size, faster).
    ``understand``: for a bundle with an ``understanding/`` folder (EARL-nano; ``engine.understanding``) the
    instruction is read first, an ``Understood`` event comes before any candidate, and the LM gets the edit in
    the words it was trained on (the typed text when the reading is unsure or names an unknown object). A sure
    reading of colour, tone and geometric edits only also tells the full-resolution render to blend none of
    the model's own pixels in, and one that ends in black and white to keep no tint (``Reading.render_hints``).
    ``transpose``: a candidate may come out with the grid turned on its side (W×H for an H×W photo: a quarter
    turn of a landscape photo comes out portrait), the model choosing at the header (``engine.constraint``);
    None: when the bundle was trained to choose (``engine.bundle.transpose_default``), unless the reading of
    the instruction is sure it asks for no quarter turn (``Reading.sideways``).
    """
    t0 = time.perf_counter()
    msg = _check_args(instruction, n, temperature, top_k, top_p, cfg_text, cfg_image, preview_every)
    if msg:
        yield Error(msg)
        return
    from engine.image_io import ImageInputError, bundle_aspects, fit_to_bundle, load_image, prepare_image

    original = None
    try:
        cfg = bundle.config
        if full_resolution:
            original = load_image(image)
            img = fit_to_bundle(bundle, original)
        else:
            img = prepare_image(image, cfg.image_area, bundle.vq.spatial_factor, aspects=bundle_aspects(bundle))
        with num_threads(_vq_threads(bundle)):
            grid = np.asarray(bundle.vq.encode([img])[0], dtype=np.int64)
    except ImageInputError as e:
        yield Error(str(e))
        return
    except Exception as e:  # noqa: BLE001 - the stream reports, the caller decides
        yield Error(f"Could not prepare the image: {e}")
        return
    t_prepare = time.perf_counter() - t0
    n = int(n)
    if seed is None:
        seed = secrets.randbelow(2**31 - MAX_CANDIDATES)
    seeds = [int(seed) + i for i in range(n)]
    if fp16 is None:
        fp16 = fp16_default(bundle)
    text = instruction.strip()
    hints: dict[str, bool] = {}  # no reading: the render keeps whatever the model drew
    if understand:
        reading = _understand(bundle, text)
        if reading is not None:
            yield Understood(reading.summary, reading.canonical, reading.warning, reading.as_dict())
            text = reading.canonical or text
            hints = reading.render_hints()
            if transpose is None and not reading.sideways:  # a flip or a colour change keeps the photo's shape
                transpose = False
    if transpose is None:
        transpose = transpose_default(bundle)
    try:
        yield from _run(bundle, grid, text, n, think, seeds, temperature, top_k, top_p, cfg_text,
                        cfg_image, preview_every, max_new_tokens, cancel, t0, t_prepare, fp16, speculate,
                        _Renderer(bundle, original, grid, hints) if original is not None else None,
                        transpose)
    except PromptTooLong as e:
        yield Error(str(e))
    except Exception as e:  # noqa: BLE001
        yield Error(f"Generation failed: {type(e).__name__}: {e}")


def _understand(bundle: Any, text: str) -> Any:
    """The bundle's reading of ``text`` (``engine.understanding.Reading``), or None: no reader, or it failed
    (then the text goes to the model as typed, as for any bundle without one)."""
    from engine import understanding

    try:
        reader = understanding.for_bundle(bundle)
        return reader.read(text) if reader is not None else None
    except Exception:  # noqa: BLE001 - reading is a help, never a reason not to edit
        return None


def _run(bundle: Any, grid: np.ndarray, instruction: str, n: int, think: bool, seeds: list[int],
         temperature: float, top_k: int, top_p: float, cfg_text: float, cfg_image: float, preview_every: int,
         max_new_tokens: int | None, cancel: threading.Event | None, t0: float, t_prepare: float,
         fp16: bool = False, speculate: int = 0, renderer: _Renderer | None = None,
         transpose: bool = False) -> Iterator[Event]:
    tok = bundle.tokenizer
    sp = special_ids(tok)
    h, w = grid.shape
    prompt = build_prompt(tok, grid, instruction, think)
    guidance = make_guidance(tok, grid, n, think, cfg_text, cfg_image)
    steps = sample(bundle, [prompt] * n, h, w, seeds, think=think, temperature=temperature, top_k=top_k,
                   top_p=top_p, guidance=guidance, max_new_tokens=max_new_tokens, cancel=cancel, fp16=fp16,
                   speculate=speculate, transpose=transpose)

    k_end = len(sp.think_end_ids)
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    text_ids: list[list[int]] = [[] for _ in range(n)]
    shown: list[str] = [""] * n
    text_open = [think] * n
    out = [grid.copy() for _ in range(n)]  # rows not generated yet: the source's codes (transposed once turned)
    row_codes: list[list[int]] = [[] for _ in range(n)]
    first_token: float | None = None
    first_preview: list[float | None] = [None] * n
    painter = _PreviewPainter(bundle, t0)

    def painted(wait: bool) -> Iterator[Event]:
        for c, rows, im, at in painter.ready(wait):
            if first_preview[c] is None:
                first_preview[c] = at
            yield Preview(c, im, rows)

    try:
        for events in steps:
            if first_token is None:
                first_token = time.perf_counter() - t0
            previews: list[tuple[int, int]] = []
            finished: list[int] = []
            for ev in events:
                c = ev.candidate
                tokens[c].append(ev.token)
                logprobs[c].append(ev.logprob)
                if ev.kind == "text":
                    text_ids[c].append(ev.token)
                    # Hold back the last len(THINK_END) tokens: they may be the marker itself.
                    delta = _text_delta(tok, text_ids[c][: len(text_ids[c]) - k_end], shown[c])
                    if delta:
                        shown[c] += delta
                        yield Text(c, delta)
                    continue
                if text_open[c]:
                    text_open[c] = False  # reasoning finished: flush what was held back
                    final = tok.decode(text_ids[c][: len(text_ids[c]) - k_end])
                    if final.startswith(shown[c]) and len(final) > len(shown[c]):
                        yield Text(c, final[len(shown[c]) :])
                        shown[c] = final
                if ev.kind == "visual":
                    row_codes[c].append(int(sp.code_of[ev.token]))
                elif ev.kind == "eol":
                    codes = row_codes[c]
                    row_codes[c] = []
                    if len(codes) != out[c].shape[1]:  # the candidate chose the transposed header
                        out[c] = grid.T.copy()
                    out[c][ev.row] = codes
                    yield ImageRow(c, ev.row, codes)
                    done_rows = ev.row + 1
                    # row 1 at once (the drawing shows up as early as it can), then every preview_every rows
                    if preview_every and (done_rows == 1 or done_rows % preview_every == 0) and done_rows < out[c].shape[0]:
                        previews.append((c, done_rows))
                if ev.finished:
                    finished.append(c)
            if previews:
                painter.submit([(c, rows, out[c].copy()) for c, rows in previews])
            # a candidate's previews come before its Done: wait for them when one finishes
            yield from painted(wait=bool(finished))
            if finished:
                yield from _finish(bundle, finished, tokens, logprobs, seeds, (h, w), transpose, t0, t_prepare,
                                   first_token, first_preview, renderer)
        yield from painted(wait=True)
    finally:
        steps.close()
        painter.close()


class _PreviewPainter:
    """Decodes previews on a worker thread while the sampler goes on: the sampler decodes a small LM on
    one thread, so on a 2-core machine the image tokenizer's decoder runs on the otherwise idle core.
    Previews come back in the order they were asked for, stamped with the time their image was ready."""

    def __init__(self, bundle: Any, t0: float):
        self.bundle, self.t0 = bundle, t0
        self.pending: deque[tuple[list[tuple[int, int]], Future]] = deque()
        # torch's thread count is per thread (OpenMP): the worker sets its own, the sampler's stays
        threads = _vq_threads(bundle)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="earl-preview",
                                       initializer=torch.set_num_threads if threads else None,
                                       initargs=(threads,) if threads else ())

    def _decode(self, grids: list[np.ndarray]) -> tuple[list[Image.Image], float]:
        images = self.bundle.vq.decode(grids)
        return images, time.perf_counter() - self.t0

    def submit(self, items: list[tuple[int, int, np.ndarray]]) -> None:
        fut = self.pool.submit(self._decode, [g for _, _, g in items])
        self.pending.append(([(c, rows) for c, rows, _ in items], fut))

    def ready(self, wait: bool) -> Iterator[tuple[int, int, Image.Image, float]]:
        """Finished previews in order; with ``wait`` all of them (blocking), else those already done."""
        while self.pending and (wait or self.pending[0][1].done()):
            which, fut = self.pending.popleft()
            images, at = fut.result()  # a decoding error surfaces here, in the caller's thread
            for (c, rows), im in zip(which, images, strict=True):
                yield c, rows, im, at

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _text_delta(tok: Any, ids: list[int], shown: str) -> str:
    if not ids:
        return ""
    text = tok.decode(ids)
    if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
        return ""
    return text[len(shown) :] if text.startswith(shown) else ""


class _Renderer:
    """Renders finished candidates at the photo's resolution (``engine.render``). The source as the
    image tokenizer reproduces it is decoded once, when the first candidate finishes."""

    def __init__(self, bundle: Any, original: Image.Image, grid: np.ndarray, hints: dict[str, bool] | None = None):
        self.bundle, self.original, self.grid, self.hints = bundle, original, grid, hints or {}
        self._source: Image.Image | None = None
        f = bundle.vq.spatial_factor
        # a photo no larger than the model's picture: the model's output is already at its resolution
        self.needed = original.size != (grid.shape[1] * f, grid.shape[0] * f)

    def __call__(self, output: Image.Image) -> tuple[Image.Image | None, dict[str, Any]]:
        from engine.render import render_full

        if not self.needed:
            return output, {"method": "model resolution", "size": list(output.size)}
        try:
            if self._source is None:
                with num_threads(_vq_threads(self.bundle)):
                    self._source = self.bundle.vq.decode([self.grid])[0]
            res = render_full(self.original, self._source, output, **self.hints)
            return res.image, res.provenance
        except Exception as e:  # noqa: BLE001 - the model's output still stands; the failure is recorded
            return None, {"method": "failed", "error": f"{type(e).__name__}: {e}"}


def _finish(bundle: Any, finished: list[int], tokens: list[list[int]], logprobs: list[list[float]],
            seeds: list[int], src_hw: tuple[int, int], transpose: bool, t0: float, t_prepare: float,
            first_token: float | None, first_preview: list[float | None], renderer: _Renderer | None = None
            ) -> Iterator[Event]:
    parsed = []
    for c in finished:
        try:
            reasoning, g = parse_generation(bundle.tokenizer, tokens[c], expect_hw=src_hw, transpose=transpose)
            parsed.append((c, reasoning, g))
        except ValueError as e:  # cannot happen under the constraint; reported, not raised
            yield Error(f"candidate {c + 1} produced a malformed sequence: {e}", c)
    if not parsed:
        return
    with num_threads(_vq_threads(bundle)):
        images: list[Image.Image] = bundle.vq.decode([g for _, _, g in parsed])
    now = time.perf_counter() - t0
    for (c, reasoning, g), im in zip(parsed, images, strict=True):
        gen_time = max(now - t_prepare, 1e-9)
        timings = {
            "prepare": t_prepare,
            "first_token": first_token or now,
            "first_preview": first_preview[c] if first_preview[c] is not None else now,
            "total": now,
            "tokens_per_s": len(tokens[c]) / gen_time,
        }
        full, prov = None, {}
        if renderer is not None:
            t_r = time.perf_counter()
            full, prov = renderer(im)
            timings["render"] = time.perf_counter() - t_r
            timings["total"] = time.perf_counter() - t0
        yield Done(c, im, g, list(tokens[c]), list(logprobs[c]), reasoning, seeds[c], timings, full, prov)


def edit_blocking(bundle: Any, image: Any, instruction: str, **kw: Any) -> list[Done]:
    """``edit`` run to the end: the ``Done`` events ordered by candidate. ValueError on any ``Error``."""
    done: list[Done] = []
    for ev in edit(bundle, image, instruction, **kw):
        if isinstance(ev, Error):
            raise ValueError(ev.message)
        if isinstance(ev, Done):
            done.append(ev)
    return sorted(done, key=lambda d: d.candidate)
