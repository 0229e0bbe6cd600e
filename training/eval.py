"""Evaluate a bundle on the fixed held-out editing suite with the programmatic verifier.

    python -m training.eval [--bundle PATH] [--think] [--split test] [--sets data/suite]
                            [--n-per-kind N] [--seed S] [--greedy | --temperature T --top-k K]
                            [--candidates C] [--batch B] [--out results.json] [--sheet sheet.png]
                            [--phrasings templates|heldout|suite-held]

Each sample of ``<sets>/v<suite version>/<split>`` (built with ``python -m training.data.suite build-sets``; when
missing, the same samples are built into ``data/cache/eval-sets/``) is edited by the bundle and scored with
``training.verifier.score`` (0–10). Printed per edit kind, per category (global / geometry / object /
compose) and overall, next to three references scored the same way:

- ``floor``   — the source returned unchanged;
- ``vq``      — the ground truth passed through the bundle's own image tokenizer (encode → decode): the
  best any model using this tokenizer can do. **This is the ``ceiling`` of the last line**;
- ``gt``      — the ground truth itself (≈ 10 by the verifier's construction).

Sampling follows EARL's evaluation: temperature 1.0, top-k 2048 unless ``--greedy``. Every sample gets
its own seed, derived from ``--seed`` and the sample id (``sample_seed``), so a run is reproducible and a
sample's output does not depend on which other samples are evaluated with it. Samples of the same grid
shape are decoded together as one batch by ``engine.sampler`` (``--batch`` prompts at a time).

The overall score is the mean over samples (the fixed sets hold the same number of samples per kind, so
this is also the mean of the per-kind means). The last line is machine-readable::

    eval overall=<model> floor=<unchanged source> ceiling=<ground truth through the tokenizer> n=<samples>

For other code (RL / DPO comparisons): ``evaluate(bundle, samples, think, ...) -> EvalResult`` and
``load_samples(...)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from engine.image_io import fit_to_bundle
from training import verifier

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "data" / "cache" / "eval-sets"
SYSTEMS = ("model", "floor", "vq", "gt")  # what EvalResult can average
CATEGORIES = ("global", "geometry", "object", "compose")
# --phrasings: the sample key each choice reads ("heldout" is filled in from training.heldout_phrasings)
PHRASINGS = {"templates": "instruction", "suite-held": "instruction_heldout", "heldout": "instruction_phrasebook"}
EARL_TOP_K = 2048
_SEED_SPAN = 2**31 - 4096  # leaves room for seed + candidate index below 2**31


# ----------------------------------------------------------------------------------------- samples


def load_samples(sets: str | Path = "data/suite", split: str = "test", n_per_kind: int | None = None,
                 corpus: str | Path | None = "data/corpus", cache: str | Path | None = None,
                 kinds: Sequence[str] | None = None) -> list[dict]:
    """The fixed ``split`` of the suite: ``<sets>/v<SUITE_VERSION>/<split>`` when it exists, else the same
    samples built with ``training.data.suite.build_sets`` into ``cache`` (default ``data/cache/eval-sets``).

    ``n_per_kind`` keeps the first N samples of every kind (None: all); ``kinds`` keeps only those edit
    kinds (None: all; a sample's sampling seeds depend on its id alone, so its score is the same as in a
    full run). Sample dicts are those of
    ``training.data.suite.load_set`` (``id, kind, category, source, target, mask, instruction,
    instruction_heldout, ...``) plus ``set_path``: the folder they were read from.
    """
    from training.data.suite import KINDS, SET_SIZES, SPLIT_CODE, SUITE_VERSION, build_sets, load_set

    if split not in SPLIT_CODE or split == "train":
        raise ValueError(f"unknown evaluation split {split!r}; use test or val")
    if n_per_kind is not None and n_per_kind < 1:
        raise ValueError(f"--n-per-kind must be at least 1 (got {n_per_kind})")
    if kinds is not None:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown or not kinds:
            raise ValueError(f"unknown edit kind(s) {unknown or kinds}; choose from {', '.join(KINDS)}")
    base = Path(sets) / f"v{SUITE_VERSION}"
    if not (base / split / "samples.jsonl").exists():
        have_corpus = corpus is not None and (Path(corpus) / "manifest.jsonl").exists()
        cache_root = Path(cache) if cache is not None else CACHE / ("corpus" if have_corpus else "skimage")
        base = cache_root / f"v{SUITE_VERSION}"
        need = n_per_kind or SET_SIZES.get(split, 10)
        built = 0
        if (base / "VERSION.json").exists() and (base / split / "samples.jsonl").exists():
            version = json.loads((base / "VERSION.json").read_text())
            if version.get("kinds") == list(KINDS):  # a set of a few kinds (build_sets(kinds=)) is not the suite
                built = int(version.get("sizes", {}).get(split, 0))
        if built < need:
            print(f"[eval] {Path(sets) / f'v{SUITE_VERSION}' / split} not found: building {need} samples per kind "
                  f"into {base} (once)", file=sys.stderr)
            build_sets(cache_root, corpus if have_corpus else None, sizes={split: need})
    samples = load_set(base, split)
    if kinds is not None:
        wanted = set(kinds)
        samples = [s for s in samples if s["kind"] in wanted]
    if n_per_kind is not None:
        seen: dict[str, int] = {}
        kept = []
        for s in samples:
            if seen.get(s["kind"], 0) < n_per_kind:
                seen[s["kind"]] = seen.get(s["kind"], 0) + 1
                kept.append(s)
        samples = kept
    for s in samples:
        s["set_path"] = str(base / split)
    return samples


def sample_seed(seed: int, sample_id: str) -> int:
    """The seed of a sample's first candidate (candidate j uses ``+ j``): stable across runs and subsets."""
    return (int(seed) * 1_000_003 + zlib.crc32(sample_id.encode())) % _SEED_SPAN


# ----------------------------------------------------------------------------------------- results


@dataclass
class SampleScore:
    """Scores of one sample: the model's (mean over its candidates) and the three references."""

    id: str
    kind: str
    category: str
    instruction: str
    seeds: list[int]
    model: float  # mean overall verifier score of the candidates (0 for a failed candidate)
    floor: float  # the unchanged source
    vq: float  # the ground truth through the bundle's image tokenizer
    gt: float  # the ground truth
    candidates: list[dict] = field(default_factory=list)  # VerifierScore.as_dict() per candidate
    reasoning: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # malformed / unfinished generations
    outputs: list[Image.Image] | None = None  # decoded candidates (keep_images=True); not serialised
    understood: str | None = None  # what the model was given instead of ``instruction`` (understanding=)

    def get(self, system: str) -> float:
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; use one of {SYSTEMS}")
        return float(getattr(self, system))

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("id", "kind", "category", "instruction", "understood", "seeds", "model",
                                           "floor", "vq", "gt", "candidates", "reasoning", "errors")}
        for k in ("model", "floor", "vq", "gt"):
            d[k] = round(d[k], 4)
        return d


@dataclass
class EvalResult:
    """Per-sample scores plus the settings they were produced with; means by kind / category / overall."""

    samples: list[SampleScore]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.samples)

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(s.kind for s in self.samples))

    def categories(self) -> list[str]:
        present = dict.fromkeys(s.category for s in self.samples)
        return [c for c in CATEGORIES if c in present] + [c for c in present if c not in CATEGORIES]

    def mean(self, system: str = "model", kind: str | None = None, category: str | None = None) -> float:
        """Mean score of ``system`` (model / floor / vq / gt) over the samples of ``kind`` / ``category``."""
        vals = [s.get(system) for s in self.samples
                if (kind is None or s.kind == kind) and (category is None or s.category == category)]
        return float(np.mean(vals)) if vals else float("nan")

    def by_kind(self, system: str = "model") -> dict[str, float]:
        return {k: self.mean(system, kind=k) for k in self.kinds()}

    def by_category(self, system: str = "model") -> dict[str, float]:
        return {c: self.mean(system, category=c) for c in self.categories()}

    @property
    def overall(self) -> float:
        return self.mean("model")

    @property
    def floor(self) -> float:
        return self.mean("floor")

    @property
    def ceiling(self) -> float:
        """The tokenizer ceiling (ground truth encoded and decoded by the bundle's image tokenizer)."""
        return self.mean("vq")

    def table(self) -> str:
        """A plain-text table: one row per kind, then per category, then overall."""
        head = f"{'kind':18s} {'n':>3s} {'model':>6s} {'floor':>6s} {'vq':>6s} {'gt':>6s}"
        rule = "-" * len(head)
        lines = [head, rule]

        def row(label: str, **sel: str) -> str:
            n = sum(1 for s in self.samples if all(getattr(s, k) == v for k, v in sel.items()))
            vals = " ".join(f"{self.mean(m, **sel):6.2f}" for m in SYSTEMS)
            return f"{label:18s} {n:3d} {vals}"

        lines += [row(k, kind=k) for k in self.kinds()]
        lines.append(rule)
        lines += [row(c, category=c) for c in self.categories()]
        lines.append(rule)
        vals = " ".join(f"{self.mean(m):6.2f}" for m in SYSTEMS)
        lines.append(f"{'overall':18s} {self.n:3d} {vals}")
        return "\n".join(lines)

    def closeness_by_kind(self, score: str = "closeness") -> dict[str, float]:
        """Mean shaping score (a ``verifier.SHAPING`` name, −10…10; 0 = no closer than the source) of the
        model's candidates per kind: it still moves where the verifier gives every output 0."""
        out = {}
        for k in self.kinds():
            vals = [c[score] for s in self.samples if s.kind == k for c in s.candidates if score in c]
            if vals:
                out[k] = float(np.mean(vals))
        return out

    def summary_line(self) -> str:
        return f"eval overall={self.overall:.3f} floor={self.floor:.3f} ceiling={self.ceiling:.3f} n={self.n}"

    def to_json(self) -> dict:
        return {
            "settings": self.settings,
            "overall": {m: round(self.mean(m), 4) for m in SYSTEMS},
            "by_kind": {k: {m: round(self.mean(m, kind=k), 4) for m in SYSTEMS} for k in self.kinds()},
            "by_category": {c: {m: round(self.mean(m, category=c), 4) for m in SYSTEMS} for c in self.categories()},
            "n": self.n,
            "samples": [s.to_json() for s in self.samples],
        }


# ----------------------------------------------------------------------------------------- evaluate


def _score(s: dict, output: Image.Image | np.ndarray) -> verifier.VerifierScore:
    return verifier.score(s["source"], output, s["target"], s["mask"])


def _shaping(s: dict, output: Image.Image) -> dict[str, float]:
    return {name: round(f(s["source"], output, s["target"]), 3) for name, f in verifier.SHAPING.items()}


def evaluate(
    bundle: Any,
    samples: Sequence[dict],
    think: bool = False,
    *,
    temperature: float = 1.0,
    top_k: int = EARL_TOP_K,
    top_p: float = 1.0,
    seed: int = 0,
    candidates: int = 1,
    batch_size: int = 16,
    heldout_phrasing: bool = False,
    phrasings: str = "templates",
    understanding: Any = None,
    max_new_tokens: int | None = None,
    baselines: bool = True,
    generate: bool = True,
    keep_images: bool = False,
    progress: bool = True,
    fp16: bool = False,
    cfg_text: float = 1.0,
    cfg_image: float = 1.0,
) -> EvalResult:
    """Edit every sample with ``bundle`` and score it with the verifier; see the module doc.

    ``samples``: dicts with ``id, kind, category, source, target, mask, instruction`` (``load_samples`` or
    ``training.data.suite.stream``). ``temperature`` 0 is greedy. ``candidates`` edits per sample (seeds
    ``sample_seed(seed, id) + j``); a sample's model score is their mean, and a candidate that fails to
    produce a well-formed image scores 0 (its error is kept). ``batch_size``: prompts decoded together
    (samples of one grid shape; candidates count). ``phrasings``: which instruction each sample gets (see
    ``PHRASINGS``): ``templates`` its own (the training templates' words), ``suite-held`` the suite's held-out
    template (``instruction_heldout``; also ``heldout_phrasing=True``), ``heldout`` the held-out phrasing set of
    ``training.heldout_phrasings`` (everyday wording written apart from the templates). ``understanding``: an
    ``engine.understanding.Understanding``; each instruction is read by it first and the model gets its
    canonical wording where it has one, as ``engine.edit`` does for a bundle with an ``understanding/`` folder.
    ``baselines`` False skips the floor / tokenizer / ground-truth scores (they are then NaN);
    ``generate`` False skips the model (its scores are NaN; only ``bundle.vq`` and ``bundle.config`` are
    used). ``keep_images`` keeps the decoded outputs on ``SampleScore.outputs`` (for contact sheets).
    The LM is switched to eval mode for the run and restored afterwards (safe to call mid-training).
    ``fp16``: decode with half-precision weights, as ``engine.edit`` does by default on a CPU (``engine.sampler``).
    ``cfg_text`` / ``cfg_image``: classifier-free guidance scales, as ``engine.edit`` takes them (1 = off).
    """
    if candidates < 1 or batch_size < 1:
        raise ValueError("candidates and batch_size must be at least 1")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if cfg_text <= 0 or cfg_image <= 0:
        raise ValueError(f"guidance scales must be > 0 (1 = off), got text {cfg_text}, image {cfg_image}")
    if phrasings not in PHRASINGS:
        raise ValueError(f"unknown phrasings {phrasings!r}; use one of {', '.join(PHRASINGS)}")
    if heldout_phrasing:
        phrasings = "suite-held"
    key = PHRASINGS[phrasings]
    for s in samples:  # a held-out phrasing is chosen from the sample's kind and params
        need = ("id", "kind", "source", "target", "mask") + (("params",) if phrasings == "heldout" else (key,))
        missing = [k for k in need if k not in s]
        if missing:
            raise ValueError(f"sample {s.get('id', '?')} lacks {missing}")
    if phrasings == "heldout":
        from training import heldout_phrasings

        samples = [{**s, key: heldout_phrasings.instruction(s)} for s in samples]
    typed = [s[key] for s in samples]
    understood: list[str | None] = [None] * len(samples)
    if understanding is not None:
        understood = [understanding.read(t).canonical for t in typed]
        samples = [{**s, "instruction_understood": u or t} for s, t, u in zip(samples, typed, understood, strict=True)]
        key = "instruction_understood"
    t0 = time.perf_counter()
    seeds = [[sample_seed(seed, s["id"]) + j for j in range(candidates)] for s in samples]
    n = len(samples)
    outs: list[list[Image.Image | None]] = [[None] * candidates for _ in samples]
    reasons: list[list[str]] = [[""] * candidates for _ in samples]
    errors: list[list[str]] = [[] for _ in samples]
    n_tokens = 0
    if generate and n:
        n_tokens = _generate(bundle, samples, key, think, seeds, outs, reasons, errors, temperature=temperature,
                             top_k=top_k, top_p=top_p, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             progress=progress, fp16=fp16, cfg_text=cfg_text, cfg_image=cfg_image)
    t_gen = time.perf_counter() - t0

    # References: the ground truth through the tokenizer (one batched encode / decode).
    vq_imgs: list[Image.Image | None] = [None] * n
    if baselines and n:
        tg = bundle.vq.encode([fit_to_bundle(bundle, s["target"]) for s in samples])
        vq_imgs = list(bundle.vq.decode([np.asarray(g, dtype=np.int64) for g in tg]))

    nan = float("nan")
    failed = verifier.VerifierScore(0.0, 0.0, 0.0, 0.0, 0.0).as_dict()
    results: list[SampleScore] = []
    for i, s in enumerate(samples):
        # each candidate also gets the RL shaping scores (verifier.SHAPING), which rank
        # the failures
        cand = [{**_score(s, im).as_dict(), **_shaping(s, im)} if im is not None
                else {**failed, **dict.fromkeys(verifier.SHAPING, verifier.SHAPING_FAILED)} for im in outs[i]] if generate else []
        results.append(SampleScore(
            id=s["id"], kind=s["kind"], category=s.get("category", ""), instruction=typed[i], seeds=seeds[i],
            understood=understood[i],
            model=float(np.mean([c["overall"] for c in cand])) if generate else nan,
            floor=_score(s, s["source"]).overall if baselines else nan,
            vq=_score(s, vq_imgs[i]).overall if baselines else nan,
            gt=_score(s, s["target"]).overall if baselines else nan,
            candidates=cand, reasoning=reasons[i] if think and generate else [], errors=errors[i],
            outputs=[o if o is not None else Image.new("RGB", s["target"].size, "black") for o in outs[i]]
            if keep_images and generate else None,
        ))
    cfg = bundle.config
    settings = {
        "bundle": f"{cfg.name}@{cfg.version}", "bundle_path": str(bundle.path) if bundle.path else None,
        # only for a bundle loaded from disk: an in-memory one may be mid-training (the hash is cached)
        "weights_hash": bundle.weights_hash() if generate and bundle.path is not None else None, "think": think, "temperature": temperature,
        "top_k": top_k, "top_p": top_p, "seed": seed, "candidates": candidates, "phrasings": phrasings,
        "understanding": str(understanding.folder) if understanding is not None else None,
        "understood": sum(u is not None for u in understood),
        "max_new_tokens": max_new_tokens, "generate": generate, "cfg_text": cfg_text, "cfg_image": cfg_image,
        "set_path": samples[0].get("set_path") if samples else None,
        "generation_s": round(t_gen, 2), "total_s": round(time.perf_counter() - t0, 2),
        "tokens_per_s": round(n_tokens / max(t_gen, 1e-9), 1),
    }
    return EvalResult(results, settings)


def _generate(bundle: Any, samples: Sequence[dict], key: str, think: bool, seeds: list[list[int]],
              outs: list[list[Image.Image | None]], reasons: list[list[str]], errors: list[list[str]], *,
              temperature: float, top_k: int, top_p: float, batch_size: int, max_new_tokens: int | None,
              progress: bool, fp16: bool = False, cfg_text: float = 1.0, cfg_image: float = 1.0) -> int:
    """Decode every (sample, candidate) into ``outs`` / ``reasons`` / ``errors``; returns the tokens generated."""
    from tqdm import tqdm

    from engine.generate import encode_sources, generate

    grids = encode_sources(bundle, [s["source"] for s in samples])  # what the model sees
    which = [(i, j) for i in range(len(samples)) for j in range(len(seeds[i]))]
    lm = bundle.lm
    was_training = lm.training
    lm.eval()
    bar = tqdm(total=len(which), desc="eval", unit="edit", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    try:
        edits = generate(bundle, [grids[i] for i, _ in which], [samples[i][key] for i, _ in which],
                         [seeds[i][j] for i, j in which], think=think, temperature=temperature, top_k=top_k,
                         top_p=top_p, max_new_tokens=max_new_tokens, cfg_text=cfg_text, cfg_image=cfg_image,
                         fp16=fp16, batch_size=batch_size, on_batch=bar.update)
    finally:
        bar.close()
        lm.train(was_training)
    for (i, j), e in zip(which, edits, strict=True):
        if e.error is not None:  # unfinished (token budget) or malformed: scored 0
            errors[i].append(f"candidate {j}: {e.error}")
        else:
            outs[i][j], reasons[i][j] = e.image, e.reasoning
    return sum(len(e.tokens) for e in edits)


# ----------------------------------------------------------------------------------------- sheet


def contact_sheet(result: EvalResult, samples: Sequence[dict], path: str | Path, per_kind: int = 2,
                  cell: int = 112) -> Path:
    """PNG: one row per kind, ``per_kind`` samples side by side as source | output | target, with scores.

    Needs ``evaluate(..., keep_images=True)``.
    """
    by_id = {s["id"]: s for s in samples}
    rows: dict[str, list[SampleScore]] = {}
    for r in result.samples:
        if r.outputs is None:
            raise ValueError("contact_sheet needs evaluate(..., keep_images=True)")
        if len(rows.setdefault(r.kind, [])) < per_kind:
            rows[r.kind].append(r)
    label_w, head_h, text_h = 110, 20, 14
    block = 3 * cell + 8
    sheet = Image.new("RGB", (label_w + per_kind * block, head_h + len(rows) * (cell + text_h + 6)), "white")
    d = ImageDraw.Draw(sheet)
    for b in range(per_kind):
        for c, t in enumerate(("source", "output", "target")):
            d.text((label_w + b * block + c * cell + 4, 4), t, fill="black")
    for y_i, (kind, rs) in enumerate(rows.items()):
        y = head_h + y_i * (cell + text_h + 6)
        d.text((4, y + cell // 2 - 6), kind, fill="black")
        for b, r in enumerate(rs):
            s = by_id[r.id]
            for c, im in enumerate((s["source"], r.outputs[0], s["target"])):
                t = im.resize(s["target"].size, Image.Resampling.NEAREST)  # outputs may be smaller
                t.thumbnail((cell, cell))
                x0 = label_w + b * block + c * cell
                sheet.paste(t, (x0 + (cell - t.width) // 2, y + (cell - t.height) // 2))
            d.text((label_w + b * block + 4, y + cell + 1),
                   f"model {r.candidates[0]['overall']:.1f}  floor {r.floor:.1f}  vq {r.vq:.1f}", fill=(60, 60, 60))
        d.line([(0, y + cell + text_h + 3), (sheet.width, y + cell + text_h + 3)], fill=(210, 210, 210))
    sheet.save(path)
    return Path(path)


# ----------------------------------------------------------------------------------------- CLI


def _vq_only(vq_dir: str | Path, image_area: int) -> Any:
    """A bundle holding only an image tokenizer (``evaluate(..., generate=False)`` needs nothing else)."""
    from engine.bundle import Bundle, BundleConfig
    from engine.vq import NanoVQ

    if not (Path(vq_dir) / "config.json").exists():
        raise SystemExit(f"no image tokenizer at {vq_dir} (expected a NanoVQ save_pretrained folder)")
    vq = NanoVQ.from_pretrained(str(vq_dir), local_files_only=True).eval()
    cfg = BundleConfig(family="earl-nano", name=f"vq:{Path(vq_dir).name}", version="-", image_area=image_area,
                       spatial_factor=vq.spatial_factor, codebook_size=vq.codebook_size)
    return Bundle(config=cfg, lm=None, tokenizer=None, vq=vq, grid_embed=None, path=None)


def compare_table(before: dict, after: dict) -> str:
    """Model score per kind, category and overall of two ``to_json`` results side by side, with the delta."""
    if before.get("n") != after.get("n"):
        raise ValueError(f"the two results cover different samples (n={before.get('n')} vs {after.get('n')})")
    lines = [f"{'kind':18s} {'before':>7s} {'after':>7s} {'delta':>7s}"]

    def row(label: str, b: dict, a: dict) -> str:
        return f"{label:18s} {b['model']:7.2f} {a['model']:7.2f} {a['model'] - b['model']:+7.2f}"

    for group in ("by_kind", "by_category"):
        lines.append("-" * len(lines[0]))
        lines += [row(k, before[group][k], v) for k, v in after[group].items() if k in before[group]]
    lines.append("-" * len(lines[0]))
    lines.append(row("overall", before["overall"], after["overall"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the shipped assets/earl-nano)")
    ap.add_argument("--think", action="store_true", help="reason first (EARL's CE mode)")
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--sets", default="data/suite", help="folder of build-sets output (default data/suite)")
    ap.add_argument("--corpus", default="data/corpus", help="photos used when the set must be built")
    ap.add_argument("--n-per-kind", type=int, default=None, help="first N samples of every kind (default all)")
    ap.add_argument("--kinds", default=None, help="comma-separated edit kinds to score (default: all)")
    ap.add_argument("--exclude-photos", default=None, metavar="PREFIX,…",
                    help="drop samples whose photo id starts with one of these (e.g. sk-: the scikit-image test "
                         "photos the GPU stages of earlier versions very likely trained on: the model card's held-out caveat)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--greedy", action="store_true", help="argmax decoding (temperature 0)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=EARL_TOP_K)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--candidates", type=int, default=1, help="edits per sample (score = their mean)")
    ap.add_argument("--batch", type=int, default=16, help="prompts decoded together")
    ap.add_argument("--phrasings", default="templates", choices=list(PHRASINGS),
                    help="instructions: templates (the training templates' words, default), heldout (everyday "
                         "wording written apart from them, training/data/heldout_phrasings.jsonl), suite-held (the "
                         "suite's held-out template clauses)")
    ap.add_argument("--heldout-phrasing", action="store_true", help="same as --phrasings suite-held")
    ap.add_argument("--understand", nargs="?", const="bundle", default=None, metavar="FOLDER",
                    help="read each instruction with engine.understanding first (the bundle's understanding/ "
                         "folder, or FOLDER) and give the model its canonical wording, as engine.edit does")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the tokenizer / prefill")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true",
                    help="half-precision decoding weights (the studio's default on a CPU; default here: float32)")
    ap.add_argument("--cfg-text", type=float, default=1.0,
                    help="classifier-free guidance on the instruction (1 = off, as EARL samples)")
    ap.add_argument("--cfg-image", type=float, default=1.0,
                    help="classifier-free guidance on the source image (1 = off)")
    ap.add_argument("--out", default=None, help="write per-sample scores and means as JSON")
    ap.add_argument("--compare", default=None, help="an earlier --out JSON (e.g. the parent model's): print a "
                    "before / after / delta table per kind")
    ap.add_argument("--closeness", action="store_true",
                    help="also print the mean shaping scores (verifier.SHAPING: closeness, layout, layout_corr) per kind")
    ap.add_argument("--sheet", default=None, help="write a contact sheet PNG (source / output / target)")
    ap.add_argument("--sheet-per-kind", type=int, default=2)
    ap.add_argument("--references-only", action="store_true",
                    help="skip the model: only the floor and the two ceilings (model column = nan)")
    ap.add_argument("--vq", default=None, help="an image tokenizer folder (NanoVQ save_pretrained) instead of a "
                    "bundle, for the references before an editing model exists (implies --references-only)")
    ap.add_argument("--image-area", type=int, default=128 * 128, help="with --vq: the working area in pixels")
    a = ap.parse_args(argv)
    generate = not (a.references_only or a.vq)
    if a.cfg_text <= 0 or a.cfg_image <= 0:
        ap.error("--cfg-text and --cfg-image must be > 0 (1 = off)")
    if a.sheet and not generate:
        ap.error("--sheet needs the model's outputs (drop --references-only / --vq)")

    import torch

    from engine.bundle import default_bundle_path, load_bundle

    torch.set_num_threads(max(1, a.threads))
    if a.vq:
        bundle, path = _vq_only(a.vq, a.image_area), Path(a.vq)
    else:
        path = Path(a.bundle) if a.bundle else default_bundle_path()
        if not (path / "bundle.json").exists():
            ap.error(f"no bundle at {path} (pass --bundle PATH)")
        bundle = load_bundle(path, device=a.device)
    try:
        samples = load_samples(a.sets, a.split, a.n_per_kind, a.corpus,
                               kinds=a.kinds.split(",") if a.kinds else None)
    except ValueError as e:
        ap.error(str(e))
    if a.exclude_photos:
        prefixes = tuple(p for p in a.exclude_photos.split(",") if p)
        samples = [s for s in samples if not str(s.get("photo_id", "")).startswith(prefixes)]
        if not samples:
            ap.error(f"--exclude-photos {a.exclude_photos} leaves no samples")
    understanding = None
    if a.understand and generate:
        from engine.understanding import Understanding, folder_of

        folder = folder_of(bundle) if a.understand == "bundle" else Path(a.understand)
        if folder is None or not (folder / "vocab.json").exists():
            ap.error(f"--understand: no understanding folder ({a.understand}); build one with "
                     "python -m training.understanding build")
        understanding = Understanding(folder)
    temperature = 0.0 if a.greedy else a.temperature
    mode = "greedy" if temperature == 0 else f"T={temperature:g} top-k={a.top_k} top-p={a.top_p:g}"
    print(f"{'bundle' if generate else 'references only,'} {bundle.config.name}@{bundle.config.version} ({path}), "
          f"{len(samples)} {a.split} samples "
          f"from {samples[0]['set_path'] if samples else '-'}, think={a.think}, {mode}, seed={a.seed}, "
          f"{'fp16' if a.fp16 else 'float32'} decoding, "
          f"phrasings {'suite-held' if a.heldout_phrasing else a.phrasings}"
          + (f", read by {understanding.folder}" if understanding is not None else "")
          + (f", guidance text {a.cfg_text:g} image {a.cfg_image:g}" if (a.cfg_text, a.cfg_image) != (1.0, 1.0) else ""))
    res = evaluate(bundle, samples, a.think, temperature=temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed,
                   candidates=a.candidates, batch_size=a.batch, heldout_phrasing=a.heldout_phrasing, phrasings=a.phrasings,
                   understanding=understanding,
                   max_new_tokens=a.max_new_tokens, generate=generate, keep_images=bool(a.sheet), fp16=a.fp16,
                   cfg_text=a.cfg_text, cfg_image=a.cfg_image)
    print()
    print(res.table())
    st = res.settings
    n_err = sum(len(s.errors) for s in res.samples)
    print(f"\nmodel: {a.candidates} sample(s) per edit; floor: source unchanged; vq: ground truth through the "
          f"bundle's tokenizer (the ceiling below); gt: ground truth.\n"
          + (f"generation {st['generation_s']:.1f} s ({st['tokens_per_s']:.0f} tok/s), " if generate else "")
          + f"total {st['total_s']:.1f} s"
          + (f", {n_err} malformed/unfinished outputs scored 0" if n_err else ""))
    if a.out:
        Path(a.out).write_text(json.dumps(res.to_json(), indent=1))
        print(f"wrote {a.out}")
    if a.sheet:
        print(f"wrote {contact_sheet(res, samples, a.sheet, a.sheet_per_kind)}")
    if a.closeness and generate:
        for score in verifier.SHAPING:
            cl = res.closeness_by_kind(score)
            print(f"\n{score} (RL shaping score, -10..10; {verifier.SHAPING_ZERO[score]}): "
                  + " ".join(f"{k}={v:.2f}" for k, v in cl.items()))
            geo = [c[score] for s in res.samples if s.category == "geometry" for c in s.candidates]
            if geo:
                print(f"{score} geometry={np.mean(geo):.3f} n={len(geo)}")
    if a.compare:
        print("\n" + compare_table(json.loads(Path(a.compare).read_text()), res.to_json()))
    print(res.summary_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
