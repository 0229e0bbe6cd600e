"""``generate``: a batch of edits run to the end — prompt → sample → parse → decode, written once.

For code that edits many (source, instruction, seed) triples and wants finished results: the evaluation,
GRPO rollouts, research scripts. The studio's streaming edits (rows and previews as they are drawn)
are ``engine.edit``. Candidates of one grid shape are decoded together, ``batch_size`` at a time; each
draws from its own seed, so its tokens do not depend on which others share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from engine.bundle import transpose_default
from engine.image_io import fit_to_bundle
from engine.layout import build_prompt, parse_generation
from engine.sampler import SAMPLING_DEFAULTS, batch_guidance, sample_all


@dataclass
class GeneratedEdit:
    """One candidate's finished edit.

    ``grid`` and ``image`` are None when the tokens do not form a whole image (the token budget ran out);
    ``error`` then says why. ``reasoning`` is the think-mode text ("" without it).
    """

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reasoning: str = ""
    grid: np.ndarray | None = None
    image: Image.Image | None = None
    error: str | None = None


def encode_sources(bundle: Any, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """Code grids of ``images`` at the size the bundle's model reads (``fit_to_bundle``), one batched encode."""
    if not images:
        return []
    return [np.asarray(g, dtype=np.int64) for g in bundle.vq.encode([fit_to_bundle(bundle, im) for im in images])]


def generate(
    bundle: Any,
    grids: Sequence[np.ndarray],
    instructions: Sequence[str],
    seeds: Sequence[int],
    *,
    think: bool = False,
    temperature: float = SAMPLING_DEFAULTS["temperature"],
    top_k: int = int(SAMPLING_DEFAULTS["top_k"]),
    top_p: float = SAMPLING_DEFAULTS["top_p"],
    max_new_tokens: int | None = None,
    cfg_text: float = 1.0,
    cfg_image: float = 1.0,
    fp16: bool = False,
    speculate: int = 0,
    forced_prefix: Sequence[Sequence[int]] | None = None,
    target_hw: Sequence[tuple[int, int]] | None = None,
    transpose: bool | None = None,
    batch_size: int | None = None,
    decode: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> list[GeneratedEdit]:
    """Edit source code grid ``grids[i]`` as ``instructions[i]`` says, drawing from ``seeds[i]``; one
    ``GeneratedEdit`` per triple, in order.

    ``grids``: the sources as code grids (``encode_sources``); several candidates of one source may share
    its array. Triples are grouped by output grid shape (in order of first appearance) and decoded
    ``batch_size`` at a time (None: each shape's group at once). Sampling arguments are
    ``engine.sampler.sample``'s; ``cfg_text`` / ``cfg_image`` are classifier-free guidance scales (1 = off);
    ``forced_prefix[i]``: the first tokens of candidate i, given instead of sampled. ``target_hw[i]``: the
    shape of candidate i's output grid (None: its source's). ``transpose``: the model may also write the
    transposed grid (W×H for an H×W shape, ``engine.constraint``); None: when the bundle was trained to
    choose (``engine.bundle.transpose_default``). ``decode`` False
    leaves ``image`` None (no image tokenizer decode). ``on_batch(n)`` is called after each batch with its
    number of candidates (progress bars). ``PromptTooLong`` and bad arguments raise.
    """
    n = len(grids)
    if len(instructions) != n or len(seeds) != n or any(x is not None and len(x) != n
                                                        for x in (forced_prefix, target_hw)):
        raise ValueError(f"{n} grids need as many instructions, seeds (and forced prefixes, target shapes)")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tok = bundle.tokenizer
    if transpose is None:
        transpose = transpose_default(bundle)
    grids = [np.asarray(g, dtype=np.int64) for g in grids]  # no copy of int64 arrays: shared ones stay shared
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(grids):
        by_shape.setdefault(tuple(target_hw[i]) if target_hw is not None else g.shape, []).append(i)
    out: list[GeneratedEdit | None] = [None] * n
    for (h, w), group in by_shape.items():
        step = batch_size or len(group)
        for b in range(0, len(group), step):
            chunk = group[b : b + step]
            prompts = [build_prompt(tok, grids[i], instructions[i], think) for i in chunk]
            guidance = batch_guidance(tok, [grids[i] for i in chunk], think, cfg_text, cfg_image)
            gens = sample_all(bundle, prompts, h, w, [seeds[i] for i in chunk], think=think,
                              temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                              fp16=fp16, guidance=guidance, speculate=speculate, transpose=transpose,
                              forced_prefix=[forced_prefix[i] for i in chunk] if forced_prefix is not None else None)
            done = []
            for i, prompt, g in zip(chunk, prompts, gens, strict=True):
                e = out[i] = GeneratedEdit(prompt, g.tokens, g.logprobs)
                try:
                    e.reasoning, e.grid = parse_generation(tok, g.tokens, expect_hw=(h, w), transpose=transpose)
                    done.append(e)
                except ValueError as err:  # unfinished (token budget) or malformed
                    e.error = str(err)
            if decode and done:  # the image tokenizer decodes H×W and transposed W×H grids alike
                for e, im in zip(done, bundle.vq.decode([e.grid for e in done]), strict=True):
                    e.image = im
            if on_batch is not None:
                on_batch(len(chunk))
    return out  # type: ignore[return-value]

