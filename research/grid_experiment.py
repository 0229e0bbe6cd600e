"""Does a geometry-aware position feature make flips learnable faster? A controlled A/B from scratch.

    python -m research.grid_experiment --arm learned  --out runs/gridexp/learned  --steps 400
    python -m research.grid_experiment --arm centred  --out runs/gridexp/centred  --steps 400
    python -m research.grid_experiment --report runs/gridexp          # table of both arms
    python -m research.grid_experiment --score assets/earl-nano runs/x --kinds hflip,grayscale   # any bundles
    python -m research.grid_experiment --transformed-copy            # how much of a flip is copying?
    python -m research.grid_experiment --score assets/earl-nano --continue-rows 0,4,8,12   # started on a flip,
                                                                    # does the model go on flipping?

Geometry edits are learnt after colour mappings (docs/ARCHITECTURE.md §9: "colour mappings are learnt
first, copying from a transformed position later"); results in research/LOG.md. A flip asks the target token at (r, c) to copy the source token at
(r, W-1-c). With learned row/column tables that is a match between unrelated random vectors the model
must discover column by column. The ``centred`` arm adds ``engine.grid_embed``'s fixed sin/cos features
of the *centred* coordinates x = c - (W-1)/2, y = r - (H-1)/2 through a learned projection: mirroring is
then x -> -x, which flips the sign of the sin features only, a fixed linear map an attention head can
learn once for every column (rotations swap the row and column features, also linear).

Both arms start from the same seed, see the same batches (train split of the SFT cache, restricted to
``--kinds`` plus 8 % "keep unchanged"), and are scored every ``--eval-every`` steps on held-out val-split
samples: teacher-forced NLL and accuracy of the target image tokens per kind, under the sampler's
constraint (the engine's ``sequence_logprobs``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from engine.constraint import constraint_for
from engine.grid_embed import GridEmbedding
from engine.layout import build_prompt, build_target, special_ids
from engine.logprobs import sequence_logprobs
from engine.vq import NanoVQ, apply_d4
from training.data.pretokenize import KEEP_PHRASINGS, encode_records, load_cache, raw_records
from training.train_sft import Batcher, SFTConfig, new_bundle, next_batch, sft_step

DEFAULT_KINDS = "hflip,vflip,rotate180,grayscale,invert"


def heldout_records(vq: NanoVQ, kinds: list[str], n_per_kind: int, corpus: str | None) -> list[dict]:
    from training.data.suite import stream

    recs = []
    for kind in kinds:
        gen = stream("val", seed=7, corpus=corpus, kinds=[kind])
        raw = raw_records([next(gen) for _ in range(n_per_kind)], 1, np.random.default_rng(0))
        recs += encode_records(vq, raw)
    return recs


@torch.no_grad()
def evaluate(bundle, recs: list[dict]) -> dict[str, dict[str, float]]:
    """Per kind: mean NLL of the target image tokens and the share of them that are the model's argmax."""
    tok = bundle.tokenizer
    sp = special_ids(tok)
    bundle.lm.eval()
    bundle.grid_embed.eval()
    acc: dict[str, list[float]] = {}
    nll: dict[str, list[float]] = {}
    for r in recs:
        h, w = r["src"].shape
        con = constraint_for(tok, h, w, False, bundle.lm.config.vocab_size)
        p = build_prompt(tok, r["src"].astype(np.int64), r["instructions"][0], False)
        g = build_target(tok, r["tgt"].astype(np.int64), None)
        logp, pred = sequence_logprobs(bundle, p, g, h, w, False, constraint=con, return_argmax=True)
        gt = torch.tensor(g)
        vis = sp.code_of[gt] >= 0
        nll.setdefault(r["kind"], []).append(float(-logp[vis].mean()))
        acc.setdefault(r["kind"], []).append(float((pred[vis] == gt[vis]).float().mean()))
    bundle.lm.train()
    bundle.grid_embed.train()
    return {k: {"nll": float(np.mean(nll[k])), "acc": float(np.mean(acc[k]))} for k in nll}


def run(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kinds = a.kinds.split(",")
    records = [r for r in load_cache(a.cache) if r["kind"] in kinds]
    cfg = replace(SFTConfig(), vq=a.vq, steps=a.steps, think_prob=0.0, warmup=a.warmup, lr=a.lr, seed=a.seed)
    texts = [t for r in records for t in (*r["instructions"], r["reasoning"], r["keep_reasoning"])] + KEEP_PHRASINGS
    torch.manual_seed(cfg.seed)
    bundle = new_bundle(cfg, texts)
    if a.arm == "centred":
        ge = GridEmbedding(cfg.hidden, centred_freqs=a.centred_freqs)
        ge.load_state_dict(bundle.grid_embed.state_dict(), strict=False)  # same base tables as "learned"
        bundle.grid_embed = ge
    held = heldout_records(bundle.vq, kinds, a.heldout, a.corpus)
    params = list(bundle.lm.parameters()) + list(bundle.grid_embed.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    batcher = Batcher(records, cfg, cfg.seed)
    accel = Accelerator(cpu=True)  # fp32, one process: the same step as train_sft's on this machine
    log = []
    t0 = time.time()
    bundle.lm.train()
    for step in range(1, cfg.steps + 1):
        batch = next_batch(batcher, bundle.tokenizer, bundle.lm.config.vocab_size)
        loss, _ = sft_step(accel, bundle, opt, params, batch, cfg, step - 1)
        if step % a.eval_every == 0 or step == cfg.steps:
            ev = evaluate(bundle, held)
            rec = {"step": step, "train_loss": loss.item(), "wall_s": round(time.time() - t0, 1), "heldout": ev}
            log.append(rec)
            (out / "log.json").write_text(json.dumps({"arm": a.arm, "kinds": kinds, "vq": a.vq, "log": log}, indent=1))
            print(f"step {step} loss {loss.item():.3f} " + " ".join(
                f"{k}:{v['acc'] * 100:.1f}%/{v['nll']:.2f}" for k, v in ev.items()), flush=True)


def copy_baseline(recs: list[dict]) -> dict[str, float]:
    """Per kind: the share of target tokens equal to the source token at the same position (what copying
    the source scores), on records of equal source and target shape."""
    out: dict[str, list[float]] = {}
    for r in recs:
        if r["src"].shape == r["tgt"].shape:
            out.setdefault(r["kind"], []).append(float((r["src"] == r["tgt"]).mean()))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _cells(ev: dict[str, dict[str, float]], kinds: list[str]) -> str:
    return "  ".join(f"{ev[k]['acc'] * 100:8.1f}% ({ev[k]['nll']:.2f})" for k in kinds)


def _copy_cells(copy: dict[str, float], kinds: list[str]) -> str:
    return "  ".join(f"{copy[k] * 100:8.1f}%        " if k in copy else f"{'—':>9}        " for k in kinds)


def report(folder: Path, a: argparse.Namespace) -> None:
    arms = {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/log.json"))}
    shown: set[str] = set()
    for name, d in arms.items():
        vq_path = d.get("vq", a.vq)
        print(f"== {name}: held-out teacher-forced accuracy of target image tokens (NLL); tokenizer {vq_path}")
        kinds = d["kinds"]
        print("step  " + "  ".join(f"{k:>16}" for k in kinds))
        if vq_path not in shown:  # arms on the same tokenizer share its baselines
            shown.add(vq_path)
            vq = NanoVQ.from_pretrained(vq_path).eval()
            held = heldout_records(vq, kinds, a.heldout, a.corpus)
            print("copy  " + _copy_cells(copy_baseline(held), kinds))
            moved = {k: v[0] for k, v in transformed_copy(held, vq).items()}
            print("moved " + _copy_cells(moved, kinds) + "  (copy from the transformed position"
                  + (", codes permuted)" if vq.config.equivariant else ")"))
        for rec in d["log"]:
            print(f"{rec['step']:>4}  " + _cells(rec["heldout"], kinds))


# The symmetry (k quarter turns, then a left-right mirror; ``engine.vq.D4``) behind each geometry kind.
SYMMETRIES: dict[str, list[tuple[int, bool]]] = {
    "hflip": [(0, True)],
    "vflip": [(2, True)],
    "rotate180": [(2, False)],
    "rotate90": [(1, False), (3, False)],  # either direction
}


def moved_grid(grid: np.ndarray, k: int, flip: bool, perm: np.ndarray | None = None) -> np.ndarray:
    """The code grid moved by a symmetry (``engine.vq.apply_d4``, the tokenizer's own convention); with an
    equivariant tokenizer's ``perm``, also its codes mapped: exactly the target's codes then."""
    g = apply_d4(torch.from_numpy(np.ascontiguousarray(grid)), k, flip).numpy()
    return perm[g] if perm is not None else g


def transformed_copy(records: list[dict], vq: NanoVQ | None = None) -> dict[str, tuple[float, float, int]]:
    """Per geometry kind: the share of target tokens equal to the source token at the transformed
    position (for an equivariant ``vq``, after its code permutation), and the share a code-to-code table
    learnt on the first 3/4 of the records (the most frequent target code per moved source code) gets
    right on the last 1/4; plus the number of records."""
    equivariant = vq is not None and vq.config.equivariant
    out = {}
    for kind, syms in SYMMETRIES.items():
        perms = [vq.code_permutation(k, f) if equivariant else None for k, f in syms]
        pairs = []
        for r in (r for r in records if r["kind"] == kind):
            src, tgt = r["src"].astype(np.int64), r["tgt"].astype(np.int64)
            moved = [moved_grid(src, k, f, perm) for (k, f), perm in zip(syms, perms, strict=True)]
            moved = [m for m in moved if m.shape == tgt.shape]
            if moved:
                best = max(moved, key=lambda m: (m == tgt).mean())
                pairs.append((best.ravel(), tgt.ravel()))
        if not pairs:
            continue
        fit, test = pairs[: len(pairs) * 3 // 4], pairs[len(pairs) * 3 // 4:]
        table: dict[int, Counter] = defaultdict(Counter)
        for a, b in fit:
            for i, j in zip(a.tolist(), b.tolist(), strict=True):
                table[i][j] += 1
        best_of = {i: c.most_common(1)[0][0] for i, c in table.items()}
        copy = float(np.mean([(a == b).mean() for a, b in test]))
        lookup = float(np.mean([np.mean([best_of.get(i, -1) == j for i, j in zip(a.tolist(), b.tolist(), strict=True)])
                                for a, b in test]))
        out[kind] = (copy, lookup, len(pairs))
    return out


def score_bundles(paths: list[str], a: argparse.Namespace) -> None:
    """The same held-out teacher-forced table for finished bundles (e.g. before / after a run)."""
    from engine.bundle import load_bundle

    torch.set_num_threads(a.threads)
    kinds = a.kinds.split(",")
    held = None
    print("held-out teacher-forced accuracy of target image tokens (NLL), "
          f"{a.heldout} val-split samples per kind")
    print(f"{'bundle':<28}" + "  ".join(f"{k:>16}" for k in kinds))
    for path in paths:
        bundle = load_bundle(path, dtype=torch.float32)
        if bundle.grid_embed is None:
            raise SystemExit(f"{path}: no grid embedding (an EARL-nano bundle is expected)")
        if held is None:
            held = heldout_records(bundle.vq, kinds, a.heldout, a.corpus)
            copy = copy_baseline(held)
            print(f"{'copy the source':<28}" + _copy_cells(copy, kinds))
        print(f"{Path(path).name[-28:]:<28}" + _cells(evaluate(bundle, held), kinds), flush=True)


def continuation(bundle, recs: list[dict], rows: list[int], temperature: float = 0.7,
                 seed: int = 0) -> dict[str, dict[int, float]]:
    """Per kind and k: the share of target tokens the model samples right after the first k rows of the
    target are given (``sampler.sample(forced_prefix=…)``), over the rows it writes itself.

    Teacher-forced accuracy gives the true left neighbour of every token; this asks whether the model
    continues a correct flip once it has been started on one (exposure bias), or not at all."""
    from engine.generate import generate

    tok = bundle.tokenizer
    sp = special_ids(tok)
    out: dict[str, dict[int, list[float]]] = {}
    for r in recs:
        src, tgt = r["src"].astype(np.int64), r["tgt"].astype(np.int64)
        h, w = tgt.shape
        target = build_target(tok, tgt, None)
        head = target.index(sp.img_token) + 1
        ks = [k for k in rows if k < h]
        edits = generate(bundle, [src] * len(ks), [r["instructions"][0]] * len(ks), [seed] * len(ks),
                         temperature=temperature, top_k=0, forced_prefix=[target[: head + k * (w + 1)] for k in ks],
                         target_hw=[(h, w)] * len(ks), decode=False)
        for k, e in zip(ks, edits, strict=True):
            if e.grid is None:
                raise ValueError(e.error)
            out.setdefault(r["kind"], {}).setdefault(k, []).append(float((e.grid[k:] == tgt[k:]).mean()))
    return {kind: {k: float(np.mean(v)) for k, v in by_k.items()} for kind, by_k in out.items()}


def continuation_table(paths: list[str], a: argparse.Namespace) -> None:
    from engine.bundle import load_bundle

    torch.set_num_threads(a.threads)
    kinds, rows = a.kinds.split(","), [int(k) for k in a.continue_rows.split(",")]
    print(f"sampled accuracy of the target tokens after the first K target rows are given (T={a.temperature}), "
          f"{a.heldout} val-split samples per kind")
    for path in paths:
        bundle = load_bundle(path, dtype=torch.float32)
        held = heldout_records(bundle.vq, kinds, a.heldout, a.corpus)
        copy = copy_baseline(held)
        table = continuation(bundle, held, rows, a.temperature, a.seed)
        print(f"== {path}")
        print(f"{'kind':<12}{'copy':>8}" + "".join(f"{'K=' + str(k):>8}" for k in rows))
        for kind in kinds:
            cells = "".join(f"{table[kind][k] * 100:7.1f}%" if k in table.get(kind, {}) else f"{'-':>8}" for k in rows)
            print(f"{kind:<12}{copy.get(kind, float('nan')) * 100:7.1f}%" + cells, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", choices=("learned", "centred"), default="centred")
    ap.add_argument("--out", default="runs/gridexp/centred")
    ap.add_argument("--cache", default="data/sft_cache")
    ap.add_argument("--vq", default="assets/earl-nano/vq")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--kinds", default=DEFAULT_KINDS)
    ap.add_argument("--centred-freqs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--heldout", type=int, default=12, help="val-split samples per kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", default=None, help="print the table of the arms under this folder and exit")
    ap.add_argument("--score", nargs="+", default=None, metavar="BUNDLE",
                    help="print the held-out table for these bundles and exit")
    ap.add_argument("--continue-rows", default=None, metavar="K,K,…",
                    help="with --score BUNDLE: sampled accuracy after the first K target rows are given, and exit")
    ap.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of --continue-rows")
    ap.add_argument("--transformed-copy", action="store_true",
                    help="print how much of each geometry edit is a copy from the transformed position and exit")
    a = ap.parse_args()
    if a.transformed_copy:
        print(f"{'kind':<10} {'records':>7} {'copy from transformed position':>31} {'learnt code table':>18}")
        vq = NanoVQ.from_pretrained(a.vq).eval()
        for kind, (copy, lookup, n) in transformed_copy(load_cache(a.cache), vq).items():
            print(f"{kind:<10} {n:>7} {copy * 100:>30.1f}% {lookup * 100:>17.1f}%")
    elif a.score and a.continue_rows:
        continuation_table(a.score, a)
    elif a.score:
        score_bundles(a.score, a)
    elif a.report:
        report(Path(a.report), a)
    else:
        run(a)


if __name__ == "__main__":
    main()
