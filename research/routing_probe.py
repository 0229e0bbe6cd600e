"""Which attention head routes each geometric edit: mean attention of every (layer, head) on the source
cell a target cell reads from (``training.routing.route_map``), per kind.

    python -m research.routing_probe [--bundle B] [--cache C] [--probe]
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import numpy as np
import torch

from training.routing import RouteHead, route_map, route_pairs


@torch.no_grad()
def probe(bundle: Any, records: list[dict], per_kind: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean attention of every (layer, head) on the routed source cell, per geometric kind and for the
    aligned cell of colour and object edits (``"aligned"``): which heads do the routing."""
    from engine.constraint import constraint_for
    from engine.layout import build_prompt, build_target
    from engine.logprobs import collate, embed_inputs
    from training.data.edits import KINDS

    tok, lm = bundle.tokenizer, bundle.lm
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for r in records:
        category = KINDS[r["kind"]].category
        if category == "geometry":
            groups.setdefault(r["kind"], []).append(r)
        elif category in ("global", "object") and r["src"].shape == r["tgt"].shape:
            groups.setdefault("aligned", []).append(r)
    heads = [RouteHead(lm, layer, h) for layer in range(len(lm.model.layers))
             for h in range(lm.config.num_attention_heads)]
    out = {}
    try:
        for name, pool in sorted(groups.items()):
            acc = torch.zeros(len(heads))
            chosen = rng.sample(pool, min(per_kind, len(pool)))
            for r in chosen:
                rc = route_map(r["kind"], r.get("params", {}), r["src"].shape, r["tgt"].shape)
                if rc is None:  # aligned: the same cell
                    rc = tuple(np.meshgrid(*(np.arange(n) for n in r["tgt"].shape), indexing="ij"))
                con = constraint_for(tok, *r["tgt"].shape, False, lm.config.vocab_size)
                batch = collate(tok, con, [build_prompt(tok, r["src"], r["instructions"][0], False)],
                                [build_target(tok, r["tgt"], None)])
                lm.model(inputs_embeds=embed_inputs(bundle, batch.ids, tuple(batch.feats)),
                         attention_mask=batch.attn, use_cache=False)
                pairs = route_pairs(batch.feats, batch.gather_pos, batch.valid, [rc])
                acc += torch.stack([h.logprobs(pairs).exp().mean() for h in heads])
            out[name] = acc.reshape(len(lm.model.layers), -1) / len(chosen)
    finally:
        for h in heads:
            h.remove()
    return out


def main(argv: list[str] | None = None) -> int:
    from engine.bundle import load_bundle
    from training.data.pretokenize import load_cache

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="assets/earl-nano")
    ap.add_argument("--cache", default="data/sft_cache", help="pretokenize folder(s) with the samples to probe")
    ap.add_argument("--per-kind", type=int, default=12)
    ap.add_argument("--probe", action="store_true", help="print every head's attention on the routed cells")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    bundle = load_bundle(args.bundle, dtype=torch.float32)
    res = probe(bundle, load_cache(args.cache), args.per_kind)
    best = {}
    for name, table in res.items():
        layer, head = divmod(int(table.argmax()), table.shape[1])
        best[name] = f"{float(table.max()):.3f}@{layer}:{head}"
        print(f"{name:10s} best head {layer}:{head} attention {float(table.max()):.2f}")
        if args.probe:
            for li, row in enumerate(table):
                print(f"  layer {li}: " + " ".join(f"{v:.2f}" for v in row.tolist()))
    print("routing " + " ".join(f"{n}={b}" for n, b in best.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
