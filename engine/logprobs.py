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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.constraint import FreeFormConstraint, constraint_for
from engine.layout import grid_positions_batch


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


@dataclass
class Collated:
    """A right-padded batch of prompt + generation sequences, ready for one forward pass (CPU tensors)."""

    ids: torch.Tensor  # (B, T) prompt + generation, PAD after each end
    attn: torch.Tensor  # (B, T) 1 on real tokens
    feats: torch.Tensor  # (3, B, T) grid features (image, row, col)
    rows: torch.Tensor  # (B, G) constraint mask row of each generated token
    gen: torch.Tensor  # (B, G) generated tokens, PAD past each end
    gather_pos: torch.Tensor  # (B, G) index of the logits that predict each generated token
    valid: torch.Tensor  # (B, G) True on generated tokens


def collate(tok: Any, constraint: FreeFormConstraint, prompts: list[list[int]], gens: list[list[int]]) -> Collated:
    """Pad a batch and compute its grid features and mask rows (ValueError on a disallowed generation)."""
    if len(prompts) != len(gens):
        raise ValueError(f"{len(prompts)} prompts but {len(gens)} generations")
    if any(not p for p in prompts) or any(not g for g in gens):
        raise ValueError("empty prompt or generation")
    pad = constraint.sp.pad
    n_p = torch.tensor([len(p) for p in prompts]).unsqueeze(1)
    n_g = torch.tensor([len(g) for g in gens]).unsqueeze(1)
    b, t_max = len(prompts), int((n_p + n_g).max())
    # numpy fills a padded matrix from Python lists several times faster than one tensor per row
    ids_np = np.full((b, t_max), pad, dtype=np.int64)
    for i, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        ids_np[i, : len(p)] = p
        ids_np[i, len(p) : len(p) + len(g)] = g
    ids = torch.from_numpy(ids_np)
    t = torch.arange(t_max).unsqueeze(0)
    attn = (t < n_p + n_g).long()
    rows, gi, gr, gc = constraint.replay_batch(gens)
    g_max = rows.shape[1]
    j = torch.arange(g_max).unsqueeze(0)
    valid = j < n_g
    gather_pos = torch.where(valid, n_p - 1 + j, torch.zeros_like(j))  # logits at t predict token t+1
    gen = torch.where(valid, torch.gather(ids, 1, (n_p + j).clamp(max=t_max - 1)), torch.full_like(j, pad))
    # prompt features from the prompt alone, generation features from the constraint (what the sampler
    # feeds): placed at each generation's offset
    prompt_ids = torch.where(t < n_p, ids, torch.full_like(ids, pad))
    feats = torch.stack(grid_positions_batch(tok, prompt_ids)) * (t < n_p)
    gen_feats = torch.stack([gi, gr, gc])
    dest = (n_p + j).clamp(max=t_max - 1).expand(b, g_max)
    for f in range(3):
        feats[f].scatter_add_(1, dest, torch.where(valid, gen_feats[f], torch.zeros_like(gen_feats[f])))
    return Collated(ids, attn, feats, rows, gen, gather_pos, valid)


def collated_logprobs(bundle: Any, batch: Collated, constraint: FreeFormConstraint,
                      return_argmax: bool = False, return_full: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, G) log-probs of ``batch.gen`` (zero past each end); see the module docstring.

    ``return_argmax``: also the most likely allowed token at each position. ``return_full``: also the
    (B, G, vocab) log-probs of every token at every position (soft targets in SFT need the whole row).
    """
    if return_argmax and return_full:
        raise ValueError("return_argmax and return_full are exclusive")
    lm = bundle.lm
    device = next(lm.parameters()).device
    ids, attn = batch.ids.to(device, non_blocking=True), batch.attn.to(device, non_blocking=True)
    embeds = embed_inputs(bundle, ids, tuple(batch.feats.to(device, non_blocking=True)))
    gather_pos = batch.gather_pos.to(device, non_blocking=True)
    base = base_lm(lm)
    if hasattr(base, "model") and hasattr(base, "lm_head"):
        # Only the generated positions need the (vocab-wide) LM head.
        hidden = base.model(inputs_embeds=embeds, attention_mask=attn, use_cache=False).last_hidden_state
        logits = base.lm_head(torch.gather(hidden, 1, gather_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])))
    else:
        out = lm(inputs_embeds=embeds, attention_mask=attn, use_cache=False).logits
        logits = torch.gather(out, 1, gather_pos.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
    masks = constraint.masks.to(device)
    gen, valid = batch.gen.to(device, non_blocking=True), batch.valid.to(device, non_blocking=True)
    logp = F.log_softmax(logits.float() + masks[batch.rows.to(device, non_blocking=True)], dim=-1)
    out = torch.gather(logp, 2, gen.unsqueeze(-1)).squeeze(-1)
    out = torch.where(valid, out, torch.zeros_like(out))
    if return_argmax:
        return out, torch.where(valid, logp.argmax(-1), gen)
    if return_full:
        return out, logp
    return out


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
    transpose: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Differentiable log-probs of ``gen_ids`` given ``prompt_ids`` (see the module docstring).

    One sequence (lists of ints) -> tensor (T,). A batch (lists of lists) -> tensor (B, T_max), zero
    past each sequence's end. Sequences are right-padded and run in one forward pass with an attention
    mask. Gradients flow into the LM (and grid embedding) unless called under no_grad.
    ``return_argmax``: also the most likely allowed token at each position given the tokens before it
    (teacher forcing; what greedy decoding would pick there), shaped like the log-probs.
    ``transpose``: the generations were sampled with the transposed header allowed (``engine.constraint``),
    so the header choice has its log-prob; ignored when ``constraint`` is given.
    """
    prompts, batched = _as_batch(prompt_ids)
    gens, batched_g = _as_batch(gen_ids)
    if len(prompts) != len(gens):
        raise ValueError(f"{len(prompts)} prompts but {len(gens)} generations")
    if constraint is None:
        vocab = base_lm(bundle.lm).config.vocab_size
        constraint = constraint_for(bundle.tokenizer, h, w, think, vocab,
                                    max_new_tokens or (max(len(g) for g in gens) if think else None),
                                    transpose=transpose)
    batch = collate(bundle.tokenizer, constraint, prompts, gens)
    res = collated_logprobs(bundle, batch, constraint, return_argmax=return_argmax)
    if not (batched or batched_g):
        return (res[0][0], res[1][0]) if return_argmax else res[0]
    return res
