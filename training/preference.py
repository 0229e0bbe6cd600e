"""Learning from ratings without a verifier: DPO on preference pairs, KTO on thumbs, and group-relative
updates on candidates graded side by side. Readable top to bottom.

    python -m training.preference --method dpo --data ~/.earl-studio --bundle assets/earl-nano --out runs/dpo
    python -m training.preference --method kto --data ~/.earl-studio --bundle assets/earl-nano --out runs/kto
    python -m training.preference --method group --data ~/.earl-studio --bundle assets/earl-nano --out runs/group
    accelerate launch --multi_gpu --num_processes 2 -m training.preference ...      # several processes

Data come from the studio's feedback store (``feedback.store``), with the exact token ids each candidate
was generated with: DPO uses A/B pairs, best-of-N choices (chosen vs each other shown candidate) and,
unless ``--no-use-stars``, star ratings (within one rater's ratings of the same photo and instruction,
more stars beat fewer); KTO uses thumbs up (desirable) and down (undesirable). The prompt is rebuilt from
the stored source image and instruction (``feedback.pairs``).

Sequence log-probs are sums of ``engine.logprobs.sequence_logprobs`` (the sampler's constraint masks,
separate text / vision softmaxes; forced tokens contribute 0). The reference is the starting model,
frozen; its log-probs are computed once before training (as TRL's ``precompute_ref_log_probs``).

- DPO (sigmoid): ``−log σ(β·[(π_c − ref_c) − (π_r − ref_r)])`` — equal to TRL's ``loss_type="sigmoid"``
  (tested against TRL's own loss code).
- KTO (TRL's formulation): z = max(0, mean over the batch of π − ref on *mismatched* (prompt, completion)
  pairs), detached; desirable: λ_D·(1 − σ(β·(π − ref − z))), undesirable: λ_U·(1 − σ(β·(z − (π − ref)))).
- Group (``--method group``): GRPO's update with the person's grades as the reward, offline. Each group of
  candidates one person graded side by side (``feedback.pairs.rating_groups``: one edit's thumbs or stars,
  an A/B answer, a best-of-N pick) gives every member EARL's advantage (grade − group mean) / std; a group
  graded all alike teaches nothing and is left out, where KTO would push a whole photo's candidates up or
  down. The loss is ``training.grpo.grpo_token_loss`` with the starting model (which sampled the candidates,
  at the studio's temperature) as both the sampling and the reference policy: −min(ρA, clip(ρ, 1 ± ε)A) per token, so each token's probability moves at most ε
  in the advantage's direction however many epochs run.

Output: a new bundle version (LoRA merged) with a README card, like ``training.grpo``: both run on
``training.tuning.FineTune`` (base model, policy, reference, optimizer, checkpoints, output bundle).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.logprobs import sequence_logprobs
from feedback.pairs import Example, StoreExamples, rated_pairs, rating_groups, single_labels
from training.common import parse_config
from training.grpo import advantages, grpo_token_loss
from training.tuning import FineTune, Policy, TuneConfig, global_sum


@dataclass
class PrefConfig(TuneConfig):
    method: str = "dpo"  # dpo | kto | group
    out: str = "runs/dpo"
    beta: float = 0.1
    # DPO only: + sft_weight x per-token NLL of the chosen candidate (RPO, Pang et al. 2024). Plain DPO can
    # lower the likelihood of chosen and rejected alike, which spreads probability over worse images.
    sft_weight: float = 0.0
    epochs: int = 3
    max_steps: int = 0  # stop after this many optimizer steps, whatever the epochs (0: no cap)
    batch_size: int = 8
    use_stars: bool = True  # also pairs implied by per-candidate grades of one edit: stars, thumbs
    # KTO only: learn from thumbs alone, or from every rating that calls one candidate good or bad
    # (thumbs, stars of 4-5 and 1-2, best-of-N picks: feedback.pairs.single_labels)
    kto_from: str = "thumbs"  # thumbs | all
    clip_eps: float = 0.2  # group only: how far one token's probability ratio may move (PPO's clip)
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    think_eval: bool = False  # the held-out scores before / after in think-then-edit mode


# default learning rates (cfg.lr None): full fine-tuning, LoRA
LR = (5e-6, 5e-5)


# -- losses -----------------------------------------------------------------------------------------


def dpo_loss(pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss and the implicit rewards β·(π − ref) of chosen and rejected."""
    chosen_lr, rejected_lr = pi_c - ref_c, pi_r - ref_r
    losses = -F.logsigmoid(beta * (chosen_lr - rejected_lr))
    return losses, beta * chosen_lr.detach(), beta * rejected_lr.detach()


def kto_loss(pi: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """Per-example KTO loss; ``kl`` is the detached, clamped reference point z."""
    lr = pi - ref
    good = desirable_weight * (1 - torch.sigmoid(beta * (lr - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - lr)))
    return torch.where(desirable, good, bad)


# -- log-probs of examples ---------------------------------------------------------------------------


class SeqLogp:
    """Sequence log-probs of ``Example``s (summed, or per token), one ``sequence_logprobs`` call per
    (H, W, think, transpose) group (``Example.shape_key``)."""

    @staticmethod
    def rows(bundle: Any, prompts: list[list[int]], gens: list[list[int]],
             keys: list[tuple[int, int, bool, bool]]) -> list[torch.Tensor]:
        """Each generation's per-token log-probs, (len(gen),), zero on forced tokens."""
        out: list[torch.Tensor | None] = [None] * len(gens)
        groups: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        for (h, w, think, transpose), idx in groups.items():
            # the constraint is engine.constraint's shared one (think: budget = the longest generation)
            lp = sequence_logprobs(bundle, [prompts[i] for i in idx], [gens[i] for i in idx], h, w, think,
                                   transpose=transpose)
            for j, i in enumerate(idx):
                out[i] = lp[j, : len(gens[i])]
        return out  # type: ignore[return-value]

    def __call__(self, bundle: Any, prompts: list[list[int]], gens: list[list[int]],
                 keys: list[tuple[int, int, bool, bool]]) -> torch.Tensor:
        return torch.stack([r.sum() for r in self.rows(bundle, prompts, gens, keys)])

    def examples(self, bundle: Any, exs: list[Example]) -> torch.Tensor:
        return self(bundle, [e.prompt_ids for e in exs], [e.gen_ids for e in exs], [e.shape_key for e in exs])

    def tokens(self, bundle: Any, exs: list[Example]) -> torch.Tensor:
        """Per-token log-probs, (B, T_max), zero past each generation's end and on forced tokens."""
        rows = self.rows(bundle, [e.prompt_ids for e in exs], [e.gen_ids for e in exs], [e.shape_key for e in exs])
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


# -- data ----------------------------------------------------------------------------------------------


def load_dpo_data(store: Any, bundle: Any, use_stars: bool) -> tuple[list[tuple[Example, Example]], dict]:
    ex = StoreExamples(bundle, store)
    pairs, kinds, seen = [], {}, set()
    for chosen, rejected, kind in rated_pairs(store, use_stars):
        a, b = ex.example(chosen), ex.example(rejected)
        if a is None or b is None:
            continue
        key = (a.candidate_id, b.candidate_id, kind)
        if key in seen:
            continue
        seen.add(key)
        pairs.append((a, b))
        kinds[kind] = kinds.get(kind, 0) + 1
    return pairs, {"pairs": len(pairs), "by_source": kinds, "skipped_candidates": dict(ex.skipped)}


def load_kto_data(store: Any, bundle: Any, source: str = "thumbs") -> tuple[list[tuple[Example, bool]], dict]:
    """(example, desirable) items: thumbs, or with ``source`` "all" every single-candidate label."""
    if source not in ("thumbs", "all"):
        raise ValueError(f"kto_from: thumbs or all, not {source!r}")
    ex = StoreExamples(bundle, store)
    labels = single_labels(store) if source == "all" else [(t.candidate, t.up, "thumbs") for t in store.thumbs()]
    items, by_source = [], {}
    for cand, good, src in labels:
        e = ex.example(cand)
        if e is not None:
            items.append((e, bool(good)))
            by_source[src] = by_source.get(src, 0) + 1
    up = sum(u for _, u in items)
    info = {"thumbs": by_source.get("thumbs", 0), "up": up, "down": len(items) - up}
    if source == "all":
        info["by_source"] = by_source
    return items, {**info, "skipped_candidates": dict(ex.skipped)}


def load_group_data(store: Any, bundle: Any) -> tuple[list[tuple[Example, float]], dict]:
    """(example, advantage) for every member of a rating group that carries signal (EARL's advantage of its
    grade within the group; groups of one or graded all alike are left out)."""
    ex = StoreExamples(bundle, store)
    items, groups, flat = [], 0, 0
    for group in rating_groups(store):
        members = [(e, grade) for e, grade in ((ex.example(c), g) for c, g in group) if e is not None]
        adv = advantages([g for _, g in members])
        if adv is None:
            flat += 1
            continue
        groups += 1
        items += [(e, float(a)) for (e, _), a in zip(members, adv, strict=True) if a is not None]
    return items, {"groups": groups, "graded_alike": flat, "candidates": len(items),
                   "skipped_candidates": dict(ex.skipped)}


def batches_for_epoch(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """Deterministic shuffled batches of indices for this process (so a resumed run sees the same data)."""
    idx = list(range(n))
    random.Random(seed * 7919 + epoch).shuffle(idx)
    idx = idx[rank::world]
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]


def kl_pairs(exs: list[Example]) -> list[tuple[Example, Example]]:
    """Mismatched (prompt of one, completion of another) pairs within each ``Example.shape_key`` group (TRL: the
    completions shifted by one), for KTO's reference point."""
    groups: dict[tuple, list[Example]] = {}
    for e in exs:
        groups.setdefault(e.shape_key, []).append(e)
    out = []
    for g in groups.values():
        if len(g) > 1:
            out += [(g[i], g[(i + 1) % len(g)]) for i in range(len(g))]
    return out


# -- training ----------------------------------------------------------------------------------------


def train(cfg: PrefConfig) -> Path | None:
    """Run DPO, KTO or the group update as configured; the new bundle's folder (None on processes other than
    the main one)."""
    if cfg.method not in ("dpo", "kto", "group"):
        raise ValueError(f"unknown method {cfg.method!r}; use dpo, kto or group")
    ft = FineTune(cfg, cfg.method)
    return ft.run(lambda: _train(cfg, ft))


def _train(cfg: PrefConfig, ft: FineTune) -> Path | None:
    from feedback.store import Store

    accel, main_proc = ft.accel, ft.main
    store = Store(cfg.data)
    base = ft.base
    if cfg.method == "dpo":
        items, data_info = load_dpo_data(store, base, cfg.use_stars)
        need = 1
    elif cfg.method == "kto":
        items, data_info = load_kto_data(store, base, cfg.kto_from)
        need = 2
    else:
        items, data_info = load_group_data(store, base)
        need = 2
    if len(items) < need:
        raise SystemExit(f"not enough ratings for {cfg.method.upper()}: {data_info}")
    accel.print(f"{cfg.method.upper()} data: {data_info}")

    # reference log-probs, once, from the base before training starts (the reference never changes)
    seq = SeqLogp()
    flat = [e for it in items for e in ((it[0], it[1]) if cfg.method == "dpo" else (it[0],))]
    ref_lp: dict[int, Any] = {}  # summed log-prob (DPO, KTO) or per-token log-probs (group)
    with torch.no_grad():
        for i in range(0, len(flat), 16):
            chunk = flat[i : i + 16]
            if cfg.method == "group":
                for e, row in zip(chunk, seq.tokens(base, chunk), strict=True):
                    ref_lp[e.candidate_id] = row[: len(e.gen_ids)].clone()
            else:
                for e, v in zip(chunk, seq.examples(base, chunk).tolist(), strict=True):
                    ref_lp[e.candidate_id] = v
    ft.eval_before(think=cfg.think_eval)

    # KTO's reference point reads the reference during training; DPO's and the group loss need only ref_lp
    policy = ft.start(*LR, reference=cfg.method == "kto")
    per_epoch = math.ceil(math.ceil(len(items) / accel.num_processes) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    ft.progress.data["steps"] = total
    writer, opt = ft.writer, ft.opt
    while ft.step < total:
        epoch, b = divmod(ft.step, per_epoch)
        batches = batches_for_epoch(len(items), cfg.batch_size, cfg.seed, epoch, accel.process_index,
                                    accel.num_processes)
        batch = [items[i] for i in batches[b]] if b < len(batches) else []
        n_global = global_sum(accel, len(batch))
        opt.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        if batch:
            if cfg.method == "dpo":
                loss_sum, stats = _dpo_batch(policy, seq, batch, ref_lp, cfg)
            elif cfg.method == "kto":
                loss_sum, stats = _kto_batch(policy, seq, batch, ref_lp, cfg)
            else:
                loss_sum, stats = _group_batch(policy, seq, batch, ref_lp, cfg)
            loss = loss_sum * accel.num_processes / n_global  # summed over processes = global mean
            loss.backward()
            loss_val = float(loss_sum.detach()) / len(batch)
        else:
            loss_val = float("nan")
        ft.update()
        step = ft.step = ft.step + 1
        rec = {"step": step, "loss": round(loss_val, 6), **{k: round(v, 5) for k, v in stats.items()}}
        ft.record(rec, loss=rec["loss"], reward=stats.get("reward_margin", stats.get("reward")))
        if writer:
            writer.add_scalar("train/loss", loss_val, step)
            for k, v in stats.items():
                writer.add_scalar(f"train/{k}", v, step)
        if main_proc:
            accel.print(f"step {step}/{total} loss {loss_val:.4f} " + " ".join(f"{k} {v:.3f}" for k, v in stats.items()))
        ft.checkpoint(total)
    history = ft.history
    metrics: dict[str, Any] = {"steps": ft.step, "epochs": cfg.epochs, "wall_time_s": round(time.time() - ft.t_start, 1),
                               "loss_first": history[0]["loss"] if history else None,
                               "loss_last": history[-1]["loss"] if history else None}
    for k in ("reward_accuracy", "reward_margin"):
        vals = [h[k] for h in history[-per_epoch:] if k in h]
        if vals:
            metrics[f"{k}_last_epoch"] = round(sum(vals) / len(vals), 4)
    card = {"data": {"store": str(store.data_dir), **data_info},
            "settings": {"method": cfg.method, "beta": cfg.beta, "lr": ft.lr, "epochs": cfg.epochs,
                         "max_steps": cfg.max_steps, "sft_weight": cfg.sft_weight, "batch_size": cfg.batch_size,
                         "lora": cfg.lora, "use_stars": cfg.use_stars, "kto_from": cfg.kto_from,
                         "clip_eps": cfg.clip_eps, "processes": accel.num_processes},
            "metrics": metrics}
    return ft.finish(cfg.data or str(store.data_dir), card, think=cfg.think_eval)


def _dpo_batch(policy: Policy, seq: SeqLogp, batch: list, ref_lp: dict, cfg: PrefConfig) -> tuple[torch.Tensor, dict]:
    exs = [a for a, _ in batch] + [b for _, b in batch]
    lp = seq.examples(policy.bundle, exs)
    n = len(batch)
    ref = torch.tensor([ref_lp[e.candidate_id] for e in exs], dtype=lp.dtype, device=lp.device)
    losses, rc, rr = dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], cfg.beta)
    stats = {"reward_accuracy": float((rc > rr).float().mean()), "reward_margin": float((rc - rr).mean())}
    if cfg.sft_weight:
        n_tok = torch.tensor([len(e.gen_ids) for e in exs[:n]], dtype=lp.dtype, device=lp.device)
        nll = -lp[:n] / n_tok
        losses = losses + cfg.sft_weight * nll
        stats["chosen_nll"] = float(nll.detach().mean())
    return losses.sum(), stats


def _kto_batch(policy: Policy, seq: SeqLogp, batch: list, ref_lp: dict, cfg: PrefConfig) -> tuple[torch.Tensor, dict]:
    exs = [e for e, _ in batch]
    lp = seq.examples(policy.bundle, exs)
    ref = torch.tensor([ref_lp[e.candidate_id] for e in exs], dtype=lp.dtype, device=lp.device)
    desirable = torch.tensor([u for _, u in batch], device=lp.device)
    mism = kl_pairs(exs)
    if mism:
        prompts, gens, keys = [p.prompt_ids for p, _ in mism], [c.gen_ids for _, c in mism], [p.shape_key for p, _ in mism]
        with torch.no_grad():
            kl_pi = seq(policy.bundle, prompts, gens, keys)
            with policy.reference() as r:
                kl_ref = seq(r, prompts, gens, keys)
        kl = (kl_pi - kl_ref).mean().clamp(min=0)
    else:
        kl = torch.zeros((), device=lp.device)
    losses = kto_loss(lp, ref, desirable, kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    rewards = cfg.beta * (lp - ref).detach()
    return losses.sum(), {"kl": float(kl), "reward": float(rewards.mean())}


def _group_batch(policy: Policy, seq: SeqLogp, batch: list, ref_lp: dict,
                 cfg: PrefConfig) -> tuple[torch.Tensor, dict]:
    exs = [e for e, _ in batch]
    lp = seq.tokens(policy.bundle, exs)
    ref = torch.zeros_like(lp)
    for b, e in enumerate(exs):
        ref[b, : len(e.gen_ids)] = ref_lp[e.candidate_id]
    mask = ref != 0  # the model's choices: forced tokens and padding have log-prob 0
    adv = torch.tensor([a for _, a in batch], dtype=lp.dtype, device=lp.device)
    # offline: the starting model sampled the candidates and is the reference, so ρ = π / π_start
    loss, stats = grpo_token_loss(lp, ref.to(lp.device), ref.to(lp.device), adv, mask.to(lp.device), 0.0,
                                  cfg.clip_eps)
    with torch.no_grad():
        moved = ((lp.detach() - ref) * mask).sum(1)
        good = adv > 0
        stats["logratio_good"] = float(moved[good].mean()) if good.any() else 0.0
        stats["logratio_bad"] = float(moved[~good].mean()) if (~good).any() else 0.0
    return loss * len(batch), stats


def main(argv: list[str] | None = None) -> int:
    train(parse_config(PrefConfig, argv, prog="python -m training.preference", description=__doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
