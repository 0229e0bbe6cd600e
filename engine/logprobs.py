"""Per-token log-probs of generated sequences: the ONE implementation, shared by the sampler's checks
and by training (GRPO / DPO / KTO import ``sequence_logprobs``).

Definition (also what ``engine.sampler`` returns for what it sampled): the log-probability of each
generated token under the model's logits at temperature 1, restricted by the constraint mask of its
position (``engine.constraint``): ``log_softmax(logits + mask)[token]``. Text positions normalise over
text tokens only and visual positions over visual tokens only (EARL's separate softmaxes for language
and vision); forced tokens (EOL, header, EOF…) get exactly 0. Top-k / top-p / temperature / CFG are
sampling choices and do not enter it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from engine.constraint import FreeFormConstraint
from engine.layout import grid_positions


def base_lm(lm: Any) -> Any:
    """The Emu3ForCausalLM inside a peft wrapper (LoRA layers stay injected), or ``lm`` itself."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def embed_inputs(bundle: Any, ids: torch.Tensor, positions: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Token embeddings (B, T, hidden) plus the bundle's grid embedding of ``positions`` when it has one.

    ``positions`` is (image, row, col), each shaped like ``ids`` (see ``layout.grid_positions``).
    """
    emb = bundle.lm.get_input_embeddings()(ids)
    ge = getattr(bundle, "grid_embed", None)
    if ge is not None and positions is not None:
        image, row, col = (p.to(ids.device) for p in positions)
        _check_grid_range(ge, row, col)
        emb = emb + ge(image, row, col).to(emb.dtype)
    return emb


def _check_grid_range(ge: Any, row: torch.Tensor, col: torch.Tensor) -> None:
    cfg = ge.config
    if row.numel() and (int(row.max()) >= cfg["max_rows"] or int(col.max()) >= cfg["max_cols"]):
        raise ValueError(
            f"grid of {int(row.max()) + 1} rows / {int(col.max())} cols exceeds the bundle's grid embedding "
            f"({cfg['max_rows']} rows, {cfg['max_cols'] - 1} cols)"
        )


def _as_batch(x: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor) -> tuple[list[list[int]], bool]:
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    x = list(x)
    if x and isinstance(x[0], (list, tuple)) or (x and isinstance(x[0], torch.Tensor)):
        return [[int(t) for t in (r.tolist() if isinstance(r, torch.Tensor) else r)] for r in x], True
    return [[int(t) for t in x]], False


def sequence_logprobs(
    bundle: Any,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]],
    gen_ids: Sequence[int] | Sequence[Sequence[int]],
    h: int,
    w: int,
    think: bool,
    constraint: FreeFormConstraint | None = None,
    max_new_tokens: int | None = None,
    return_argmax: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Differentiable log-probs of ``gen_ids`` given ``prompt_ids`` (see the module docstring).

    One sequence (lists of ints) -> tensor (T,). A batch (lists of lists) -> tensor (B, T_max), zero
    past each sequence's end. Sequences are right-padded and run in one forward pass with an attention
    mask. Gradients flow into the LM (and grid embedding) unless called under no_grad.
    ``return_argmax``: also the most likely allowed token at each position given the tokens before it
    (teacher forcing; what greedy decoding would pick there), shaped like the log-probs.
    """
    prompts, batched = _as_batch(prompt_ids)
    gens, batched_g = _as_batch(gen_ids)
    if len(prompts) != len(gens):
        raise ValueError(f"{len(prompts)} prompts but {len(gens)} generations")
    lm = bundle.lm
    vocab = base_lm(lm).config.vocab_size
    if constraint is None:
        constraint = FreeFormConstraint(bundle.tokenizer, h, w, think, vocab_size=vocab,
                                        max_new_tokens=max_new_tokens or (max(len(g) for g in gens) if think else None))
    device = next(lm.parameters()).device
    tok = bundle.tokenizer
    pad = constraint.sp.pad

    b = len(prompts)
    total = [len(p) + len(g) for p, g in zip(prompts, gens, strict=True)]
    t_max = max(total)
    g_max = max(len(g) for g in gens)
    ids = torch.full((b, t_max), pad, dtype=torch.long)
    attn = torch.zeros((b, t_max), dtype=torch.long)
    feats = torch.zeros((3, b, t_max), dtype=torch.long)
    rows = torch.zeros((b, g_max), dtype=torch.long)
    gen_t = torch.full((b, g_max), pad, dtype=torch.long)
    gather_pos = torch.zeros((b, g_max), dtype=torch.long)
    valid = torch.zeros((b, g_max), dtype=torch.bool)
    for i, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        n, m = len(p), len(g)
        if n == 0 or m == 0:
            raise ValueError("empty prompt or generation")
        ids[i, : n + m] = torch.tensor(p + g)
        attn[i, : n + m] = 1
        pi, pr, pc = grid_positions(tok, p)
        r, gi, gr, gc = constraint.replay(g)
        feats[:, i, :n] = torch.stack([pi, pr, pc])
        feats[:, i, n : n + m] = torch.stack([gi, gr, gc])
        rows[i, :m] = r
        gen_t[i, :m] = torch.tensor(g)
        gather_pos[i, :m] = torch.arange(n - 1, n + m - 1)  # logits at t predict token t+1
        valid[i, :m] = True

    ids, attn = ids.to(device), attn.to(device)
    embeds = embed_inputs(bundle, ids, tuple(feats.to(device)))
    base = base_lm(lm)
    if hasattr(base, "model") and hasattr(base, "lm_head"):
        # Only the generated positions need the (vocab-wide) LM head.
        hidden = base.model(inputs_embeds=embeds, attention_mask=attn, use_cache=False).last_hidden_state
        idx = gather_pos.to(device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        logits = base.lm_head(torch.gather(hidden, 1, idx))
    else:
        out = lm(inputs_embeds=embeds, attention_mask=attn, use_cache=False).logits
        logits = torch.gather(out, 1, gather_pos.to(device).unsqueeze(-1).expand(-1, -1, out.shape[-1]))
    masks = constraint.masks.to(device)
    logp = F.log_softmax(logits.float() + masks[rows.to(device)], dim=-1)
    out = torch.gather(logp, 2, gen_t.to(device).unsqueeze(-1)).squeeze(-1)
    out = torch.where(valid.to(device), out, torch.zeros_like(out))
    single = not (batched or batched_g)
    if return_argmax:
        best = torch.where(valid.to(device), logp.argmax(-1), torch.full_like(gen_t, pad, device=device))
        return (out[0], best[0]) if single else (out, best)
    return out[0] if single else out
