"""Teach a bundle when to turn its output grid: the header choice, fitted on the LM head, the body frozen.

    python -m training.header_choice --bundle runs/turns --cache data/mix,data/turns --out runs/choice
    python -m training.header_choice --bundle runs/turns --cache data/mix,data/turns --steps 0   # measure only

With ``BundleConfig.transpose`` the constraint lets the model write the turned "W*H" header of a
non-square photo (``engine.constraint``): one token, where "H*W" and "W*H" first differ, decides whether
the output grid keeps the photo's shape or turns. Every token before it is the prompt, the reasoning (in
think mode) and a forced header prefix, so the decision is a read-out of the last hidden state there. This
fits only the LM head's rows of the tokens that can be chosen there (digits), on hidden states computed
once with the rest of the model frozen:

- **Choice.** Cross-entropy between the two allowed tokens: quarter turns of a non-square photo (target
  grid transposed) turn, every other edit keeps the shape.
- **Nothing else moves.** Visual tokens have their own rows and softmax, so no image token's distribution
  changes. The same rows are the digits of the reasoning text, so the text distribution the model writes
  at the reasoning's positions is held to the original head's (KL), and the change is kept small (L2).

Data: pretokenized suite records (``training.data.pretokenize``) with non-square sources, one random
phrasing per record in each mode (direct and think-then-edit). A share of the records is held out; the
last line is machine-readable:

    header_choice train_acc=… val_acc=… val_turn_acc=… val_keep_acc=… val_p_right=… text_kl=… n=…
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.bundle import Bundle, load_bundle, save_bundle
from engine.constraint import TEXT_ROW, constraint_for
from engine.layout import build_prompt, build_target
from engine.logprobs import base_lm, collate, embed_inputs
from training.common import parse_config


@dataclass
class ChoiceConfig:
    bundle: str = "assets/earl-nano"  # the body: an LM that can write turned grids once the header turns
    cache: str = ""  # pretokenized suite folders, comma-separated (some with quarter turns of non-square photos)
    out: str = "runs/header-choice"
    version: str = ""  # the new bundle's version (default: the body's + "-choice")
    max_records: int = 4000  # non-square records used (turns first, then the others), before the split
    val_share: float = 0.2
    think: bool = True  # also fit the think-then-edit mode (its reasoning comes before the header)
    batch: int = 16
    steps: int = 400  # 0: only measure the bundle's own choice (nothing is written)
    lr: float = 0.01
    kl_weight: float = 1.0  # the text distribution at the reasoning's positions, held to the original's
    kl_positions: int = 4096  # reasoning positions drawn for that term at each step
    l2: float = 1e-3
    seed: int = 0
    threads: int = 2
    features: str = ""  # a file to keep the hidden states in: read when it exists (refits skip the body)


# -- features ------------------------------------------------------------------------------------------


@dataclass
class Features:
    """Hidden states at the header choice (with the two allowed tokens and the answer) and at reasoning
    text positions (with the text mask row), from the frozen body."""

    choice_h: torch.Tensor  # (N, D)
    choice_tok: torch.Tensor  # (N, 2) keep-shape token, turned token
    turn: torch.Tensor  # (N,) bool
    record: torch.Tensor  # (N,) record index (for the train / val split)
    text_h: torch.Tensor  # (M, D) hidden states at reasoning text positions
    text_mask: torch.Tensor  # (V,) bool: tokens allowed in free text


def is_turn(rec: dict) -> bool:
    """Whether a record's target is its non-square source's grid transposed (a quarter turn)."""
    return tuple(rec["tgt"].shape) == tuple(rec["src"].shape[::-1])


@torch.no_grad()
def hidden_states(bundle: Bundle, records: list[dict], think: bool, batch: int, seed: int
                  ) -> tuple[list[tuple[torch.Tensor, tuple[int, int], bool, int]], list[torch.Tensor], torch.Tensor]:
    """For each record (one random phrasing): the last hidden state at the header choice, the two allowed
    tokens and whether it turns; in think mode also the hidden states at the reasoning's text positions."""
    tok = bundle.tokenizer
    base = base_lm(bundle.lm)
    vocab = base.config.vocab_size
    rng = random.Random(seed)
    choices: list[tuple[torch.Tensor, tuple[int, int], bool, int]] = []
    texts: list[torch.Tensor] = []
    text_mask = torch.zeros(vocab, dtype=torch.bool)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(tuple(r["src"].shape), []).append(i)
    for (h, w), idx in sorted(groups.items()):
        con = constraint_for(tok, h, w, think, vocab, transpose=True)
        text_mask |= torch.isfinite(con.masks[TEXT_ROW])
        for k in range(0, len(idx), batch):
            part = [records[i] for i in idx[k : k + batch]]
            prompts = [build_prompt(tok, r["src"], rng.choice(r["instructions"]), think) for r in part]
            gens = [build_target(tok, r["tgt"], r["reasoning"] if think else None) for r in part]
            b = collate(tok, con, prompts, gens)  # whole generations: the replay needs them
            # the model runs only up to the last choice of the batch: a causal model's earlier states do not
            # depend on what follows
            ats = [int((b.rows[j] == con.choice_row).nonzero()[0, 0]) for j in range(len(part))]
            t = max(int(b.gather_pos[j, at]) for j, at in enumerate(ats)) + 1
            embeds = embed_inputs(bundle, b.ids[:, :t], tuple(b.feats[:, :, :t]))
            hid = base.model(inputs_embeds=embeds, attention_mask=b.attn[:, :t], use_cache=False).last_hidden_state
            for j, (r, at) in enumerate(zip(part, ats, strict=True)):
                at_gen = hid[j, b.gather_pos[j, : at + 1]].float()  # the states that predict tokens 0 … at
                choices.append((at_gen[at], con.choice_tokens, is_turn(r), idx[k + j]))
                text_at = (b.rows[j, :at] == TEXT_ROW) & b.valid[j, :at]
                if text_at.any():
                    texts.append(at_gen[:at][text_at])
    return choices, texts, text_mask


def features(bundle: Bundle, records: list[dict], cfg: ChoiceConfig) -> Features:
    modes = [False, True] if cfg.think else [False]
    choices, texts = [], []
    text_mask = None
    for m, think in enumerate(modes):
        c, t, mask = hidden_states(bundle, records, think, cfg.batch, cfg.seed + m)
        choices += c
        texts += t
        text_mask = mask if text_mask is None else text_mask | mask
    d = choices[0][0].shape[0]
    return Features(
        choice_h=torch.stack([c[0] for c in choices]),
        choice_tok=torch.tensor([c[1] for c in choices]),
        turn=torch.tensor([c[2] for c in choices]),
        record=torch.tensor([c[3] for c in choices]),
        text_h=torch.cat(texts) if texts else torch.zeros(0, d),
        text_mask=text_mask,
    )


# -- the fit ---------------------------------------------------------------------------------------------


def choice_logits(h: torch.Tensor, head: torch.Tensor, toks: torch.Tensor) -> torch.Tensor:
    """(N, 2) logits of the keep / turn tokens under ``head`` (V, D)."""
    return torch.einsum("nd,nkd->nk", h, head[toks])


def text_kl(h: torch.Tensor, head: torch.Tensor, head0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean KL(original ‖ new) of the text distributions at the reasoning positions ``h``."""
    if not len(h):
        return torch.zeros(())
    lp0 = F.log_softmax((h @ head0[mask].T), dim=-1)
    lp = F.log_softmax((h @ head[mask].T), dim=-1)
    return (lp0.exp() * (lp0 - lp)).sum(-1).mean()


def fit(feat: Features, head0: torch.Tensor, train: torch.Tensor, cfg: ChoiceConfig) -> tuple[torch.Tensor, list[int]]:
    """The new head: ``head0`` plus a change on the rows of the tokens that appear as choices."""
    rows = sorted(set(feat.choice_tok.flatten().tolist()))
    delta = torch.zeros(len(rows), head0.shape[1], requires_grad=True)
    index = torch.tensor(rows)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    h, toks, y = feat.choice_h[train], feat.choice_tok[train], feat.turn[train].long()
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.steps):
        head = head0.index_add(0, index, delta)
        ce = F.cross_entropy(choice_logits(h, head, toks), y)
        at = torch.randint(max(len(feat.text_h), 1), (min(cfg.kl_positions, len(feat.text_h)),), generator=gen)
        kl = text_kl(feat.text_h[at], head, head0, feat.text_mask)
        loss = ce + cfg.kl_weight * kl + cfg.l2 * (delta**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            print(f"step {step} ce {ce.item():.4f} text_kl {kl.item():.5f} |delta| {delta.norm().item():.3f}",
                  flush=True)
    return head0.index_add(0, index, delta.detach()), rows


@torch.no_grad()
def scores(feat: Features, head: torch.Tensor, sel: torch.Tensor) -> dict[str, float]:
    p = torch.softmax(choice_logits(feat.choice_h[sel], head, feat.choice_tok[sel]), dim=-1)
    y = feat.turn[sel]
    right = (p.argmax(-1) == y.long()).float()
    p_right = torch.where(y, p[:, 1], p[:, 0])
    return {"acc": right.mean().item(), "turn_acc": right[y].mean().item() if y.any() else float("nan"),
            "keep_acc": right[~y].mean().item() if (~y).any() else float("nan"), "p_right": p_right.mean().item()}


# -- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from training.data.pretokenize import load_cache

    cfg = parse_config(ChoiceConfig, argv, description=__doc__)
    if not cfg.cache:
        raise SystemExit("--cache: give the pretokenized folders to fit on")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    recs = [r for r in load_cache(cfg.cache) if r["src"].shape[0] != r["src"].shape[1]]
    turns, keeps = [r for r in recs if is_turn(r)], [r for r in recs if not is_turn(r)]
    if not turns or not keeps:
        raise SystemExit(f"--cache: need non-square quarter turns and other edits (turns {len(turns)}, "
                         f"others {len(keeps)})")
    rng = random.Random(cfg.seed)
    rng.shuffle(turns)
    rng.shuffle(keeps)
    n_turn = min(len(turns), cfg.max_records // 2)
    recs = turns[:n_turn] + keeps[: cfg.max_records - n_turn]
    print(f"records: {n_turn} quarter turns, {len(recs) - n_turn} other edits (non-square photos)", flush=True)

    bundle = load_bundle(cfg.bundle, dtype=torch.float32)
    if cfg.features and Path(cfg.features).is_file():
        feat = Features(**torch.load(cfg.features))
    else:
        feat = features(bundle, recs, cfg)
        if cfg.features:
            torch.save(vars(feat), cfg.features)
    order = torch.randperm(len(recs), generator=torch.Generator().manual_seed(cfg.seed))
    val_records = order[: int(len(recs) * cfg.val_share)]
    val = torch.isin(feat.record, val_records)
    lm_head = base_lm(bundle.lm).lm_head
    head0 = lm_head.weight.detach().clone().float()
    before = scores(feat, head0, val)
    print(f"before: val_acc {before['acc']:.3f} (turn {before['turn_acc']:.3f}, keep {before['keep_acc']:.3f}) "
          f"val_p_right {before['p_right']:.3f}")
    if cfg.steps == 0:
        return 0
    head, rows = fit(feat, head0, ~val, cfg)
    tr, va = scores(feat, head, ~val), scores(feat, head, val)
    kl = text_kl(feat.text_h, head, head0, feat.text_mask).item()

    with torch.no_grad():
        lm_head.weight.copy_(head.to(lm_head.weight.dtype))
    c = bundle.config
    c.parent = f"{c.name}@{c.version}"
    c.version = cfg.version or f"{c.version}-choice"
    c.transpose = True
    c.notes = {**c.notes, "header_choice": f"training/header_choice.py on {cfg.cache}: LM head rows {rows}"}
    out = save_bundle(bundle, cfg.out)
    report = {"config": vars(cfg), "rows": rows, "before": before, "train": tr, "val": va, "text_kl": kl,
              "n": int(len(feat.turn)), "n_val": int(val.sum())}
    (out / "header_choice.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    print(f"header_choice train_acc={tr['acc']:.3f} val_acc={va['acc']:.3f} val_turn_acc={va['turn_acc']:.3f} "
          f"val_keep_acc={va['keep_acc']:.3f} val_p_right={va['p_right']:.3f} text_kl={kl:.5f} n={len(feat.turn)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
