"""Supervised fine-tuning of EARL-nano on the pre-tokenised editing suite. Readable top to bottom.

    python -m training.data.pretokenize --vq runs/vq/final --out data/sft_cache      # codes, once
    python -m training.train_sft --cache data/sft_cache --out runs/sft           # resumes if runs/sft exists
    python -m training.train_sft --cache data/sft_cache --out runs/sft --export assets/earl-nano
    python -m training.train_sft --init assets/earl-nano --out runs/sft2 --steps 3000     # continue a shipped model
    accelerate launch -m training.train_sft ...                                  # several processes / GPUs

The loss is EARL's: on the target part only (reasoning + target image + EOS), computed by the engine's
one log-prob implementation (``engine.logprobs.sequence_logprobs``), i.e. under the same constraint
masks the sampler uses, so training and sampling see the same distributions (text and vision get
separate softmaxes). Forced tokens (header, EOL, EOF…) have log-prob 0 and cost nothing.

Both of EARL's modes are trained in one model: plain edit ("E") and think-then-edit ("CE"), picked per
batch with probability ``think_prob``. A small share of "keep it unchanged" samples teaches copying the
aligned source position, which every edit builds on.

Mixed precision: bf16 autocast where the hardware has native bf16 matrix products (``native_bf16``).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from transformers import Emu3ForCausalLM

from engine.bundle import Bundle, BundleConfig, load_bundle, save_bundle
from engine.constraint import FreeFormConstraint, constraint_for
from engine.grid_embed import GridEmbedding
from engine.layout import build_prompt, build_target, special_ids
from engine.logprobs import Collated, collate, collated_logprobs
from engine.text_tokenizer import build_nano_tokenizer
from engine.tiny import tiny_lm_config
from engine.vq import FSQ, NanoVQ
from training.common import config_from, config_parser, latest, write_atomic
from training.data.pretokenize import KEEP_PHRASINGS, encode_records, load_cache
from training.data.suite import ASPECTS as SUITE_ASPECTS
from training.routing import RouteHead, parse_head, route_loss, route_map, route_pairs
from training.targets import apply_pin_local, apply_remove_fill, apply_zoom_copy


@dataclass
class SFTConfig:
    """One SFT run. The shipped model's recipe (``recipes/earl_nano/device_sft.sh``) sets the run, data and
    schedule groups; the last group holds the optional extra losses, each off by default."""

    # -- where: data in, run folder out ---------------------------------------------------------------
    cache: str = "data/sft_cache"  # a pretokenize folder, or several: "a,b"
    vq: str = "runs/vq/final"  # the image tokenizer of a new model (without init)
    out: str = "runs/sft"  # checkpoint/, config.json, tb/; a run resumes from its checkpoint
    init: str = ""  # start from this bundle's weights, tokenizer and image tokenizer (when out has no checkpoint)
    fresh_lm: bool = False  # with init: keep its tokenizer and image tokenizer, start a new LM of the size below
    # -- a new LM's size (without init, or with fresh_lm) ---------------------------------------------
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 688
    text_vocab_size: int = 1024
    centred_freqs: int = 0  # >0: centred sin/cos grid features (engine.grid_embed), for geometry edits
    image_area: int = 128 * 128
    # -- schedule: AdamW, linear warm-up then cosine decay to min_lr_ratio × lr ---------------------
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.01
    steps: int = 20000
    # >0: fit the schedule into this many minutes of wall time (from start-up): the step count is set
    # from the measured step rate, so the learning rate still decays to its end. For lent GPU time.
    max_minutes: float = 0.0
    # -- the batches ----------------------------------------------------------------------------------
    think_prob: float = 0.5  # share of batches in think-then-edit mode
    keep_prob: float = 0.08  # share of "keep it unchanged" samples (the source as its own target)
    # Oversample some edit kinds (comma list, or the categories "geometry"/"object"/"global"): each of
    # their samples is drawn focus_weight times as often, so a continued run spends its steps on the
    # kinds it has learnt least.
    focus_kinds: str = ""
    focus_weight: float = 1.0
    # Render fresh samples in this many background processes during training (training.data.live_data) and
    # add them to the pool batches are drawn from; with 0 only the cache is used. For many-core machines.
    live_workers: int = 0
    corpus: str = "data/corpus"  # the live samples' photos
    # The target header may be the source's "H*W" or the transposed "W*H" (engine.constraint's transpose),
    # so the header token where they differ is the model's choice and has a loss on every non-square sample:
    # it learns to keep the shape, except for a quarter turn. The bundle written says so
    # (BundleConfig.transpose), and inference then offers the choice. Off: the header stays forced.
    transpose: bool = True
    # -- which targets some kinds teach (training.targets) ------------------------------------------
    # "copy": zoom samples teach the source's code grid upscaled by copying cells, a positional copy the
    # model can learn, instead of the tokenizer's codes of the upscaled photo.
    zoom_targets: str = "true"
    # "pin": local (object) edits teach the source's codes outside the cells the edit drew on (and their
    # neighbours), not the codes the tokenizer's wide receptive field changed there.
    object_targets: str = "true"
    # "fill": removals teach each cell the object covered as a copy of the nearest unchanged source cell
    # (training.targets.fill_from_outside), not what the photo had there, which the source hides.
    remove_targets: str = "true"
    # -- optional extra losses (off by default) -------------------------------------------------------
    # >1: in local edits (under LOCAL_EDIT of the codes differ from the source), the target codes that differ
    # from the source weigh this much more in the loss than the copied ones: they are the edit, a few
    # dozen tokens among hundreds of easy copies.
    edit_weight: float = 1.0
    # With transpose: the header token where the model chooses the source's "H*W" or the turned "W*H"
    # weighs this much in the loss. It is one token among hundreds of image tokens, yet it decides the
    # whole output's orientation: at weight 1 a model learns it too slowly and turns ordinary edits.
    header_weight: float = 100.0
    # >0: those same edit codes are taught as a distribution over codes, exp(-d² / 2σ²) with d the
    # distance between FSQ digit vectors, instead of the one exact code: a code one digit away decodes
    # to a nearly identical cell, which the hard target gives no credit.
    soft_sigma: float = 0.0
    # "LAYER:HEAD": teach that attention head where each target cell of a geometric edit (route_kinds) reads
    # from, with an extra loss of route_weight × its negative log attention on that source cell
    # (training.routing).
    route_head: str = ""
    route_weight: float = 1.0
    route_kinds: str = "geometry"
    # A bundle to keep: samples of distill_kinds (kinds or categories) learn its image-token distributions
    # (cross-entropy against its softmax, i.e. KL to it) instead of the cached target codes, so a run on
    # a few kinds keeps what the teacher knows about the others.
    distill_from: str = ""
    distill_kinds: str = "global"
    # >0: this share of the samples lose their instruction (an empty one; kind "dropped", never distilled),
    # so the model also learns p(target | source) and classifier-free guidance on the instruction
    # (engine.sampler) has an unconditional branch it was trained on.
    cfg_dropout: float = 0.0
    # >0: this share of the samples get an instruction from training.rich_language (synonyms, politeness,
    # typos, word order) instead of one of their cached template phrasings, so the text side learns the
    # language around the templates; never a text of the held-out phrasing set (training.heldout_phrasings).
    rich_language: float = 0.0
    # -- the process ----------------------------------------------------------------------------------
    threads: int = 2
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 10


# live samples: crop sizes (more varied than the cache's) and steps between hand-overs from the workers
LIVE_SCALES = (0.25, 0.35, 0.45, 0.6, 0.8, 1.0)
LIVE_EVERY = 10


# -- model ----------------------------------------------------------------------------------------


def digit_sum_init(weight: torch.Tensor, visual_ids: torch.Tensor, levels: list[int], std: float = 0.02) -> None:
    """Make each FSQ code's row the sum of one embedding per (dimension, level) digit.

    Codes that differ in one digit then start out related, instead of as unrelated random vectors.
    """
    hidden = weight.shape[1]
    codes = torch.arange(len(visual_ids))
    rows = torch.zeros(len(visual_ids), hidden)
    radix = 1
    for lv in levels:
        digit = (codes // radix) % lv
        table = torch.randn(lv, hidden) * std / math.sqrt(len(levels))
        rows += table[digit]
        radix *= lv
    with torch.no_grad():
        weight[visual_ids] = rows.to(weight.dtype)


def new_lm(cfg: SFTConfig, tok: object, vq: NanoVQ) -> tuple[Emu3ForCausalLM, GridEmbedding]:
    """A randomly initialised LM of the configured size and its grid embedding, for ``tok`` and ``vq``;
    the visual-token embeddings start as sums of per-FSQ-digit embeddings (``digit_sum_init``)."""
    lm = Emu3ForCausalLM(tiny_lm_config(tok, cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads, cfg.intermediate))
    vis = special_ids(tok).visual_ids
    digit_sum_init(lm.get_input_embeddings().weight, vis, list(vq.config.fsq_levels))
    digit_sum_init(lm.lm_head.weight, vis, list(vq.config.fsq_levels))
    return lm, GridEmbedding(cfg.hidden, centred_freqs=cfg.centred_freqs)


def new_bundle(cfg: SFTConfig, texts: list[str]) -> Bundle:
    vq = NanoVQ.from_pretrained(cfg.vq).eval()
    tok = build_nano_tokenizer(texts, vq.codebook_size, cfg.text_vocab_size)
    lm, ge = new_lm(cfg, tok, vq)
    bcfg = BundleConfig(
        family="earl-nano", name="earl-nano", version="sft", image_area=cfg.image_area,
        spatial_factor=vq.spatial_factor, codebook_size=vq.codebook_size,
        notes={"trained_by": "training/train_sft.py"},
        aspects=list(dict.fromkeys(SUITE_ASPECTS)),  # the photo shapes the suite's samples are cropped to
    )
    return Bundle(config=bcfg, lm=lm, tokenizer=tok, vq=vq, grid_embed=ge, path=None)


def native_bf16() -> bool:
    """Whether bf16 autocast pays off here: on a GPU with bf16 support, or a CPU with native bf16 matrix
    products (AVX-512 BF16, AMX). Elsewhere bf16 is emulated and far slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX", "AVX512_AMX")


def lr_at(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# -- data -----------------------------------------------------------------------------------------


def focus_set(spec: str) -> set[str]:
    """Kinds named by ``--focus-kinds``: edit kinds and/or the suite's categories."""
    from training.data.edits import KINDS

    categories = {v.category for v in KINDS.values()}
    out: set[str] = set()
    for name in filter(None, (x.strip() for x in spec.split(","))):
        if name in categories:
            out |= {k for k, v in KINDS.items() if v.category == name}
        elif name in KINDS:
            out.add(name)
        else:
            raise SystemExit(f"--focus-kinds: unknown kind or category {name!r}; categories: {sorted(categories)}")
    return out


def check_turns(records: list[dict], transpose: bool) -> None:
    """Stop (SystemExit) when records turned on their side (a W×H target for an H×W source) meet a run with
    the header forced to the source's shape: their targets cannot be written under it."""
    if transpose:
        return
    n = sum(r["tgt"].shape != r["src"].shape for r in records)
    if n:
        raise SystemExit(f"{n} samples have the transposed target of a quarter turn, which --no-transpose forbids; "
                         "train with --transpose, or leave rotate90 out of the cache (pretokenize --kinds)")


class Batcher:
    """Batches of one source grid shape (H, W) and think flag, since one constraint (mask table) serves a
    whole batch; with ``cfg.transpose`` its targets may be H×W or, for a quarter turn, W×H (the
    constraint's two branches)."""

    def __init__(self, records: list[dict], cfg: SFTConfig, seed: int):
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.by_shape: dict[tuple[int, int], list[dict]] = {}
        for r in records:
            self.by_shape.setdefault(tuple(r["src"].shape), []).append(r)
        shapes = sorted(self.by_shape)
        if not 0 <= cfg.cfg_dropout < 1:
            raise SystemExit(f"--cfg-dropout must be in [0, 1), got {cfg.cfg_dropout}")
        if not 0 <= cfg.rich_language <= 1:
            raise SystemExit(f"--rich-language must be in [0, 1], got {cfg.rich_language}")
        check_turns(records, cfg.transpose)
        focus = focus_set(cfg.focus_kinds)
        if focus and records and not focus & {r["kind"] for r in records}:
            raise SystemExit(f"--focus-kinds: no cached samples of {sorted(focus)}")
        # per-record cumulative draw weights, as random.choices computes them (None = uniform, the original
        # sampling); either way the draws match those of earlier runs bit for bit
        self.focus = focus
        self.routed = focus_set(cfg.route_kinds) if cfg.route_head else set()
        self.distilled = focus_set(cfg.distill_kinds) if cfg.distill_from else set()
        self.item_w: dict[tuple[int, int], list[float] | None] = {}
        for s in shapes:
            rs = self.by_shape[s]
            self.item_w[s] = list(accumulate(self._w(r) for r in rs)) if focus else None
        self._reweigh()

    def _w(self, r: dict) -> float:
        return self.cfg.focus_weight if r["kind"] in self.focus else 1.0

    def _reweigh(self) -> None:
        self.shapes = sorted(self.by_shape)
        self.weights = [self.item_w[s][-1] if self.item_w[s] else len(self.by_shape[s]) for s in self.shapes]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_shape.values())

    def add(self, records: list[dict]) -> None:
        """Grow the pool (live samples); later batches draw from old and new records alike."""
        check_turns(records, self.cfg.transpose)
        for r in records:
            s = tuple(r["src"].shape)
            self.by_shape.setdefault(s, []).append(r)
            if self.focus:
                cw = self.item_w.setdefault(s, [])
                cw.append((cw[-1] if cw else 0.0) + self._w(r))
            else:
                self.item_w.setdefault(s, None)
        self._reweigh()

    def next(self) -> tuple[tuple[int, int], bool, list[tuple]]:
        """(grid shape, think, items): each item is (source, target, instruction, reasoning, route, kind),
        route being ``routing.route_map``'s source cells when ``route_head`` is set and the kind is routed,
        else None; kind is "keep" for a keep-it-unchanged sample and "dropped" for one whose instruction
        ``cfg_dropout`` removed."""
        shape = self.rng.choices(self.shapes, self.weights)[0]
        think = self.rng.random() < self.cfg.think_prob
        items = []
        for r in self.rng.choices(self.by_shape[shape], cum_weights=self.item_w[shape], k=self.cfg.batch_size):
            if self.rng.random() < self.cfg.keep_prob:
                items.append((r["src"], r["src"], self.rng.choice(KEEP_PHRASINGS), r["keep_reasoning"], None, "keep"))
            else:
                route = (route_map(r["kind"], r.get("params") or {}, r["src"].shape, r["tgt"].shape, r.get("changed"))
                         if r["kind"] in self.routed else None)
                text = self.rng.choice(r["instructions"])
                # drawn only when on, so runs without it keep the draws of earlier runs
                if self.cfg.rich_language > 0 and "params" in r and self.rng.random() < self.cfg.rich_language:
                    from numpy.random import default_rng

                    from training import rich_language

                    gen = default_rng(self.rng.getrandbits(63))
                    text = rich_language.instruction(r["kind"], r["params"], gen)
                items.append((r["src"], r["tgt"], text, r["reasoning"], route, r["kind"]))
            # drawn only when on, so runs without it keep the draws of earlier runs
            if self.cfg.cfg_dropout > 0 and self.rng.random() < self.cfg.cfg_dropout:
                src, tgt, _, why, route, _ = items[-1]
                items[-1] = (src, tgt, "", why, route, "dropped")
        return shape, think, items

    def state(self) -> object:
        return self.rng.getstate()

    def set_state(self, s: object) -> None:
        self.rng.setstate(s)


# -- training -------------------------------------------------------------------------------------


# an edit that changes less than this share of the codes is local (an object edit): --edit-weight applies
LOCAL_EDIT = 0.5


def local_edit_codes(tok: object, batch: Collated, items: list) -> torch.Tensor:
    """(B, G) bool: the generated target codes of local edits that differ from the source code at the
    same cell (the edit itself, as opposed to the copied rest of the photo)."""
    code_of = special_ids(tok).code_of
    is_vis = (code_of[batch.gen] >= 0) & batch.valid
    m = torch.zeros(batch.gen.shape, dtype=torch.bool)
    for i, item in enumerate(items):
        src, tgt = item[0], item[1]
        if src.shape != tgt.shape:
            continue
        diff = torch.from_numpy((src != tgt).ravel())
        if diff.float().mean() >= LOCAL_EDIT:
            continue
        pos = is_vis[i].nonzero().squeeze(1)
        if len(pos) != len(diff):  # the generation's codes are the target grid, row by row
            raise ValueError(f"{len(pos)} image tokens for a {tgt.shape} grid")
        m[i, pos] = diff
    return m


def edit_weights(tok: object, batch: Collated, items: list, weight: float) -> torch.Tensor | None:
    """(B, G) loss weights: ``weight`` on ``local_edit_codes``, 1 elsewhere; None when ``weight`` is 1."""
    if weight == 1.0:
        return None
    return torch.where(local_edit_codes(tok, batch, items), torch.tensor(weight), torch.tensor(1.0))


def header_weights(con: FreeFormConstraint, batch: Collated, weights: torch.Tensor | None,
                   weight: float) -> torch.Tensor | None:
    """``weights`` with ``weight`` at the header choice (``con.choice_row``); unchanged without a choice."""
    if weight == 1.0 or con.choice_row < 0:
        return weights
    at = batch.rows == con.choice_row
    if not at.any():
        return weights
    base = weights if weights is not None else torch.ones(batch.rows.shape)
    return torch.where(at, torch.tensor(weight), base)


def fsq_digits(codes: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """(..., D) float digits 0 … level - 1 of FSQ codes (``engine.vq.FSQ``'s, uncentred)."""
    fsq = FSQ(levels)
    half = fsq.levels // 2
    return (fsq.quantized_from_codes(codes) * half + half).round()


def soft_code_targets(codes: torch.Tensor, levels: list[int], sigma: float) -> torch.Tensor:
    """(N, K) target distributions over all K codes, one per code in ``codes`` (N,): proportional to
    exp(-d² / 2σ²), d the Euclidean distance between the two codes' digit vectors."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    k = math.prod(levels)
    d2 = torch.cdist(fsq_digits(codes, levels), fsq_digits(torch.arange(k), levels)) ** 2
    return torch.softmax(-d2 / (2 * sigma * sigma), dim=-1)


@dataclass
class SoftTargets:
    """Positions of a batch taught softly and their target distributions over the codes."""

    mask: torch.Tensor  # (B, G) bool
    dist: torch.Tensor  # (N, K), N = mask.sum(), rows in mask's row-major order


def soft_targets(tok: object, batch: Collated, items: list, levels: list[int], sigma: float) -> SoftTargets | None:
    """``soft_code_targets`` for the ``local_edit_codes`` of a batch; None when it has none."""
    mask = local_edit_codes(tok, batch, items)
    if not mask.any():
        return None
    codes = special_ids(tok).code_of[batch.gen[mask]]
    return SoftTargets(mask, soft_code_targets(codes, levels, sigma))


def teacher_targets(teacher: Bundle, constraint: FreeFormConstraint, batch: Collated, items: list,
                    kinds: set[str]) -> SoftTargets | None:
    """The teacher's distributions over the codes at the image tokens of the items whose kind is in
    ``kinds``; None when the batch has none. Text tokens keep their own targets (the reasoning is
    templated, nothing to keep)."""
    sp = special_ids(teacher.tokenizer)
    chosen = torch.tensor([len(it) > 5 and it[5] in kinds for it in items])
    mask = (sp.code_of[batch.gen] >= 0) & batch.valid & chosen[:, None]
    if not mask.any():
        return None
    with torch.no_grad():
        _, full = collated_logprobs(teacher, batch, constraint, return_full=True)
        vis = full[mask.to(full.device)][:, sp.visual_ids.to(full.device)]
        dist = torch.softmax(vis, dim=-1)  # renormalised over the codes (the constraint allows only codes here)
    return SoftTargets(mask, dist)


def sft_batch(tok: object, constraint: FreeFormConstraint, think: bool, items: list) -> Collated:
    """The padded training batch of ``items`` (source, target, instruction, reasoning[, route, kind])."""
    prompts = [build_prompt(tok, it[0], it[2], think) for it in items]
    gens = [build_target(tok, it[1], it[3] if think else None) for it in items]
    return collate(tok, constraint, prompts, gens)


def sft_loss(bundle: Bundle, constraint: FreeFormConstraint, batch: Collated,
             weights: torch.Tensor | None = None, soft: SoftTargets | None = None) -> tuple[torch.Tensor, dict]:
    """The target part's mean negative log-likelihood (``weights`` per generated token, optional); at
    ``soft``'s positions the cross-entropy against its distributions instead of the one target code."""
    sp = special_ids(bundle.tokenizer)
    if soft is None:
        logp = collated_logprobs(bundle, batch, constraint)
        fit = logp
    else:
        logp, full = collated_logprobs(bundle, batch, constraint, return_full=True)
        mask = soft.mask.to(logp.device)
        vis_ids = sp.visual_ids.to(logp.device)
        soft_ll = (soft.dist.to(logp.device) * full[mask][:, vis_ids]).sum(-1)
        fit = logp.masked_scatter(mask, soft_ll)
    valid = batch.valid.to(logp.device)
    is_vis = sp.code_of.to(logp.device)[batch.gen.to(logp.device)] >= 0
    n_vis = (is_vis & valid).sum().clamp(min=1)
    text = valid & ~is_vis
    # Forced tokens have log-prob 0, so summing over all valid tokens counts only the model's choices.
    if weights is None:
        loss = -(fit * valid).sum() / valid.sum()
    else:
        w = weights.to(logp.device) * valid
        loss = -(fit * w).sum() / w.sum()
    with torch.no_grad():
        stats = {
            "nll_visual": -(logp * (is_vis & valid)).sum() / n_vis,
            "nll_text": -(logp * text).sum() / text.sum().clamp(min=1),
        }
    return loss, stats


def next_batch(batcher: Batcher, tok: object, vocab_size: int, levels: list[int] | None = None,
               teacher: Bundle | None = None
               ) -> tuple[FreeFormConstraint, bool, Collated, torch.Tensor | None, torch.Tensor, SoftTargets | None]:
    """Draw the next batch and collate it (CPU work: the loop does it while the GPU runs a step): the
    constraint, think, the batch, its loss weights, its routed (item, query, key) positions and its soft
    targets (with ``cfg.soft_sigma`` > 0, which needs the tokenizer's FSQ ``levels``; or with ``teacher``,
    its distributions for the items of ``batcher.distilled``, see ``teacher_targets``)."""
    shape, think, items = batcher.next()
    # one mask table serves the whole batch, targets of the source's shape and turned ones alike
    con = constraint_for(tok, *shape, think, vocab_size, transpose=batcher.cfg.transpose)
    collated = sft_batch(tok, con, think, items)
    pairs = route_pairs(collated.feats, collated.gather_pos, collated.valid, [it[4] for it in items])
    soft = None
    if batcher.cfg.soft_sigma > 0:
        if not levels:
            raise ValueError("soft targets need the image tokenizer's FSQ levels")
        soft = soft_targets(tok, collated, items, levels, batcher.cfg.soft_sigma)
    if teacher is not None:
        if soft is not None:
            raise ValueError("--distill-from and --soft-sigma are exclusive")
        soft = teacher_targets(teacher, con, collated, items, batcher.distilled)
    weights = header_weights(con, collated, edit_weights(tok, collated, items, batcher.cfg.edit_weight),
                             batcher.cfg.header_weight)
    return con, think, collated, weights, pairs, soft


def sft_step(accel: Accelerator, bundle: Bundle, opt: torch.optim.Optimizer, params: list[torch.Tensor],
             batch: tuple, cfg: SFTConfig, step: int, router: RouteHead | None = None) -> tuple[torch.Tensor, dict]:
    """One optimizer step on ``batch`` (``next_batch``'s), at the schedule's learning rate for ``step``
    (0-based); with ``router``, plus ``cfg.route_weight`` × its routing loss.

    Nothing here waits for the GPU, so the caller can prepare the next batch before reading the loss.
    """
    for g in opt.param_groups:
        g["lr"] = lr_at(step, cfg)
    con, _, collated, weights, pairs, soft = batch
    with accel.autocast():
        loss, stats = sft_loss(bundle, con, collated, weights, soft)
        if router is not None:
            rl = route_loss(router, pairs)
            loss = loss + cfg.route_weight * rl
            stats["route_nll"] = rl.detach()
    opt.zero_grad(set_to_none=True)
    accel.backward(loss)
    accel.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss, stats


def with_targets(cfg: SFTConfig, records: list[dict]) -> list[dict]:
    """``records`` with the targets ``cfg`` trains on (``zoom_targets``, ``object_targets``,
    ``remove_targets``), in place."""
    if cfg.zoom_targets not in ("true", "copy"):
        raise SystemExit(f"--zoom-targets must be 'true' or 'copy', got {cfg.zoom_targets!r}")
    if cfg.object_targets not in ("true", "pin"):
        raise SystemExit(f"--object-targets must be 'true' or 'pin', got {cfg.object_targets!r}")
    if cfg.zoom_targets == "copy":
        apply_zoom_copy(records)
    if cfg.remove_targets not in ("true", "fill"):
        raise SystemExit(f"--remove-targets must be 'true' or 'fill', got {cfg.remove_targets!r}")
    if cfg.object_targets == "pin":
        apply_pin_local(records)
    if cfg.remove_targets == "fill":
        apply_remove_fill(records)
    return records


def load_teacher(cfg: SFTConfig, student: Bundle, vocab_size: int, device: torch.device) -> Bundle:
    """``cfg.distill_from``'s bundle, frozen, after checking it speaks the student's tokens."""
    if cfg.soft_sigma > 0:
        raise SystemExit("--distill-from and --soft-sigma are exclusive (both set soft targets)")
    teacher = load_bundle(cfg.distill_from, dtype=torch.float32)
    if (teacher.lm.config.vocab_size != vocab_size
            or teacher.tokenizer.get_vocab() != student.tokenizer.get_vocab()
            or not torch.equal(special_ids(teacher.tokenizer).visual_ids, special_ids(student.tokenizer).visual_ids)):
        raise SystemExit(f"--distill-from {cfg.distill_from}: its tokens are not the student's (another tokenizer)")
    enc_t = {k: v for k, v in teacher.vq.state_dict().items() if k.startswith("encoder")}
    enc_s = {k: v for k, v in student.vq.state_dict().items() if k.startswith("encoder")}
    # bf16 and fp32 copies of one encoder must pass, another encoder (other codes) must not
    if enc_t.keys() != enc_s.keys() or not all(
            torch.allclose(enc_t[k].float(), enc_s[k].float(), rtol=1e-2, atol=1e-3) for k in enc_t):
        raise SystemExit(f"--distill-from {cfg.distill_from}: its image tokenizer's encoder is not the student's "
                         "(its codes would mean something else)")
    teacher.lm.to(device).eval().requires_grad_(False)
    if teacher.grid_embed is not None:
        teacher.grid_embed.to(device).eval().requires_grad_(False)
    return teacher


def cache_records(cfg: SFTConfig) -> list[dict]:
    """The pre-tokenised records of ``cfg.cache`` (a missing folder holds none), with ``with_targets``."""
    return with_targets(cfg, load_cache(cfg.cache))


def train(cfg: SFTConfig, export: str | None = None) -> None:
    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    accel = Accelerator(mixed_precision="bf16" if native_bf16() else "no", cpu=not torch.cuda.is_available())
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records = cache_records(cfg)
    if cfg.live_workers:
        from training.data.suite import require_corpus

        require_corpus(cfg.corpus)
    if not records and not cfg.live_workers and not export:
        raise SystemExit(f"no pre-tokenised samples in {cfg.cache!r}; run python -m training.data.pretokenize "
                         "first, or render samples during training with --live-workers N")

    ckpt = latest(out / "checkpoint", marker="state.pt")
    if ckpt is not None:
        bundle = load_bundle(ckpt / "bundle", dtype=torch.float32)
        state = torch.load(ckpt / "state.pt", weights_only=False)
    elif cfg.init:  # continue from a shipped bf16 bundle (new optimizer state: a warm restart)
        bundle = load_bundle(cfg.init, dtype=torch.float32)
        state = None
        if cfg.fresh_lm:  # only its tokenizers: a new LM of the configured size (capacity experiments)
            torch.manual_seed(cfg.seed)
            bundle.lm, bundle.grid_embed = new_lm(cfg, bundle.tokenizer, bundle.vq)
            bundle.config.version, bundle.config.parent = "sft", None
            bundle.config.notes = {"trained_by": "training/train_sft.py", "tokenizers_from": cfg.init}
    else:
        if not records:
            raise SystemExit("a new model builds its text tokenizer from the cache: pass --cache, or --init a bundle")
        texts = [t for r in records[:2000] for t in (*r["instructions"], r["reasoning"], r["keep_reasoning"])]
        texts += KEEP_PHRASINGS
        torch.manual_seed(cfg.seed)
        bundle = new_bundle(cfg, texts)
        state = None
    if cfg.transpose:
        bundle.config.transpose = True  # the header choice is trained from here on
    params = list(bundle.lm.parameters()) + (list(bundle.grid_embed.parameters()) if bundle.grid_embed else [])
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    batcher = Batcher(records, cfg, cfg.seed + accel.process_index)
    step = 0
    if state is not None:
        opt.load_state_dict(state["opt"])
        step = state["step"]
        batcher.set_state(state["batcher"])
        torch.set_rng_state(state["torch_rng"])
        accel.print(f"resumed from step {step}")
    if export:
        save_bundle(bundle, export)
        accel.print(f"exported step {step} to {export}")
        return

    bundle.lm.train()
    if bundle.grid_embed is not None:
        bundle.grid_embed.train()
    bundle.lm, opt = accel.prepare(bundle.lm, opt)
    if bundle.grid_embed is not None:
        bundle.grid_embed = accel.prepare(bundle.grid_embed)
    live = None
    if cfg.live_workers:
        from training.data.live_data import LiveSamples

        # TF32 would move some codes across FSQ rounding boundaries: train on the codes a CPU encodes
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        bundle.vq.to(accel.device).eval()
        # a stream per process and per (re)start, so neither ranks nor resumed runs repeat samples
        live_seed = (cfg.seed * 1000 + accel.process_index) * 1_000_003 + step
        live = LiveSamples(cfg.live_workers, live_seed, cfg.corpus, list(LIVE_SCALES),
                           max_ready=max(8 * cfg.batch_size, 2 * cfg.batch_size * LIVE_EVERY))
        batcher.add(with_targets(cfg, encode_records(bundle.vq, live.drain(wait_for=8 * cfg.batch_size), batch=512)))
    n_params = sum(p.numel() for p in params)
    accel.print(f"EARL-nano LM {n_params / 1e6:.2f}M params, {len(batcher)} samples"
                f"{f' (+ live, {cfg.live_workers} workers)' if live else ''}, {len(batcher.shapes)} grid shapes")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    writer = SummaryWriter(str(out / "tb")) if accel.is_main_process else None

    def save_checkpoint() -> None:
        if not accel.is_main_process:
            return
        lm = accel.unwrap_model(bundle.lm)
        ge = accel.unwrap_model(bundle.grid_embed) if bundle.grid_embed is not None else None
        snapshot = Bundle(bundle.config, lm, bundle.tokenizer, bundle.vq, ge, None)

        def write(tmp: Path) -> None:
            # fp32: resume must be exact; the reader (understanding/) comes along from the bundle trained
            save_bundle(snapshot, tmp / "bundle", dtype=torch.float32, extras_from=bundle.path)
            state = {"opt": opt.state_dict(), "step": step, "batcher": pending[0], "torch_rng": torch.get_rng_state()}
            torch.save(state, tmp / "state.pt")  # last: a folder with state.pt is complete

        write_atomic(out / "checkpoint", write)

    bar = tqdm(total=cfg.steps, initial=step, desc="sft", dynamic_ncols=True, disable=not accel.is_main_process)
    t0, ema, step0 = time.time(), None, step
    t_window = t0
    deadline = t_start + 60 * cfg.max_minutes if cfg.max_minutes > 0 else None
    vocab_size = accel.unwrap_model(bundle.lm).config.vocab_size
    head = parse_head(cfg.route_head)
    router = RouteHead(accel.unwrap_model(bundle.lm), *head) if head else None
    teacher = load_teacher(cfg, bundle, vocab_size, accel.device) if cfg.distill_from else None
    levels = None
    if cfg.soft_sigma > 0:
        levels = list(getattr(getattr(bundle.vq, "config", None), "fsq_levels", None) or [])
        if not levels:
            raise SystemExit("--soft-sigma needs an FSQ image tokenizer (EARL-nano's); this bundle's has no levels")

    def draw(at_step: int) -> tuple:
        if live is not None and at_step % LIVE_EVERY == 0:
            batcher.add(with_targets(cfg, encode_records(bundle.vq, live.drain(), batch=512)))
        state = batcher.state()  # what a checkpoint saves: resuming redraws this batch
        return state, next_batch(batcher, bundle.tokenizer, vocab_size, levels, teacher)

    pending = draw(step)
    try:
        while step < cfg.steps:
            loss, stats = sft_step(accel, bundle, opt, params, pending[1], cfg, step, router)
            step += 1
            # the step's kernels are queued: prepare the next batch on the CPU before waiting for its loss
            # (also after the last step, so a checkpoint's batcher state is always "before the next batch")
            pending = draw(step)
            if deadline is not None and (step - step0) % 50 == 0:
                # fit the rest of the schedule into the time left (a checkpoint save is kept in reserve), at
                # the rate of the last 50 steps: the first ones are slower (start-up, warm-up of the kernels)
                now = time.time()
                rate = (now - t_window) / 50
                t_window = now
                cfg.steps = step + max(1, int((deadline - now - 15) / rate))
                bar.total = cfg.steps
                if (step - step0) % 500 == 50:
                    accel.print(f"\ntime budget: {rate * 1000:.0f} ms/step -> {cfg.steps} steps in all")
            if deadline is not None and time.time() > deadline and step < cfg.steps:
                accel.print(f"\ntime budget spent at step {step}")
                cfg.steps = step
            loss_v = loss.item()
            stats = {k: float(v) for k, v in stats.items()}
            ema = loss_v if ema is None else 0.98 * ema + 0.02 * loss_v
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", vis=f"{stats['nll_visual']:.2f}")
            if writer and step % cfg.log_every == 0:
                writer.add_scalar("train/loss", loss_v, step)
                for k, v in stats.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/lr", lr_at(step, cfg), step)
                writer.add_scalar("train/sec_per_step", (time.time() - t0) / max(1, step - step0), step)
            if step % (cfg.log_every * 10) == 0:
                el = time.time() - t0
                route = f" route_nll {stats['route_nll']:.3f}" if "route_nll" in stats else ""
                accel.print(f"\nstep {step}/{cfg.steps} loss {ema:.3f} nll_visual {stats['nll_visual']:.3f}{route} "
                            f"{el / (step - step0) * 1000:.0f} ms/step pool {len(batcher)}")
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_checkpoint()
    finally:
        bar.close()
        if live is not None:
            live.close()


def main(argv: list[str] | None = None) -> None:
    ap = config_parser(SFTConfig, prog="python -m training.train_sft", description=__doc__)
    ap.add_argument("--export", default=None, help="write the latest checkpoint as a bf16 bundle here and exit")
    args = ap.parse_args(argv)
    train(config_from(SFTConfig, args), export=args.export)


if __name__ == "__main__":
    main()
