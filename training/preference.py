"""Learning from ratings without a verifier: DPO on preference pairs, KTO on thumbs. Readable top to bottom.

    python -m training.preference --method dpo --data ~/.earl-studio --bundle assets/earl-nano --out runs/dpo
    python -m training.preference --method kto --data ~/.earl-studio --bundle assets/earl-nano --out runs/kto
    accelerate launch --multi_gpu --num_processes 2 -m training.preference ...      # several processes

Data come from the studio's feedback store (``feedback.store``), with the exact token ids each candidate
was generated with: DPO uses A/B pairs, best-of-N choices (chosen vs each other shown candidate) and,
unless ``--use-stars false``, star ratings (within one rater's ratings of the same photo and instruction,
more stars beat fewer); KTO uses thumbs up (desirable) and down (undesirable). The prompt is rebuilt from
the stored source image and instruction (``feedback.pairs``).

Sequence log-probs are sums of ``engine.logprobs.sequence_logprobs`` (the sampler's constraint masks,
separate text / vision softmaxes; forced tokens contribute 0). The reference is the starting model,
frozen; its log-probs are computed once before training (as TRL's ``precompute_ref_log_probs``).

- DPO (sigmoid): ``−log σ(β·[(π_c − ref_c) − (π_r − ref_r)])`` — equal to TRL's ``loss_type="sigmoid"``
  (tested against TRL's own loss code).
- KTO (TRL's formulation): z = max(0, mean over the batch of π − ref on *mismatched* (prompt, completion)
  pairs), detached; desirable: λ_D·(1 − σ(β·(π − ref − z))), undesirable: λ_U·(1 − σ(β·(z − (π − ref)))).

Output: a new bundle version (LoRA merged) with a README card, like ``training.grpo``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.logprobs import sequence_logprobs
from feedback.pairs import Example, StoreExamples, rated_pairs
from training.progress import Progress
from training.tuning import (
    Policy,
    average_gradients,
    global_sum,
    leave_process_group,
    load_base,
    load_checkpoint,
    make_optimizer,
    output_path,
    save_checkpoint,
    write_bundle,
    write_card,
)


@dataclass
class PrefConfig:
    method: str = "dpo"  # dpo | kto
    bundle: str = "assets/earl-nano"
    data: str | None = None  # studio data folder holding the store (default $EARL_STUDIO_DATA or ~/.earl-studio)
    out: str = "runs/dpo"
    name: str = ""  # new bundle's name (default <parent>-dpo / -kto)
    bundle_out: str | None = None
    beta: float = 0.1
    # DPO only: + sft_weight x per-token NLL of the chosen candidate (RPO, Pang et al. 2024). Plain DPO can
    # lower the likelihood of chosen and rejected alike, which spreads probability over worse images.
    sft_weight: float = 0.0
    epochs: int = 3
    batch_size: int = 8
    lr: float | None = None  # default 5e-6 full fine-tuning, 5e-5 LoRA
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    use_stars: bool = True
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0
    ckpt_every: int = 20
    threads: int = 1
    eval_n: int = 0  # held-out samples per kind scored before and after (0: skip)
    eval_split: str = "val"
    eval_sets: str = "data/suite"
    corpus: str | None = "data/corpus"
    think_eval: bool = False
    progress: str | None = None


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
    """Summed sequence log-probs of ``Example``s, one ``sequence_logprobs`` call per (H, W, think) group."""

    def __call__(self, bundle: Any, prompts: list[list[int]], gens: list[list[int]],
                 keys: list[tuple[int, int, bool]]) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * len(gens)
        groups: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        for (h, w, think), idx in groups.items():
            # the constraint is engine.constraint's shared one (think: budget = the longest generation)
            lp = sequence_logprobs(bundle, [prompts[i] for i in idx], [gens[i] for i in idx], h, w, think)
            for j, i in enumerate(idx):
                out[i] = lp[j].sum()
        return torch.stack(out)  # type: ignore[arg-type]

    def examples(self, bundle: Any, exs: list[Example]) -> torch.Tensor:
        return self(bundle, [e.prompt_ids for e in exs], [e.gen_ids for e in exs], [e.shape_key for e in exs])


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


def load_kto_data(store: Any, bundle: Any) -> tuple[list[tuple[Example, bool]], dict]:
    ex = StoreExamples(bundle, store)
    items = []
    for t in store.thumbs():
        e = ex.example(t.candidate)
        if e is not None:
            items.append((e, t.up))
    up = sum(u for _, u in items)
    return items, {"thumbs": len(items), "up": up, "down": len(items) - up, "skipped_candidates": dict(ex.skipped)}


def batches_for_epoch(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """Deterministic shuffled batches of indices for this process (so a resumed run sees the same data)."""
    idx = list(range(n))
    random.Random(seed * 7919 + epoch).shuffle(idx)
    idx = idx[rank::world]
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]


def kl_pairs(exs: list[Example]) -> list[tuple[Example, Example]]:
    """Mismatched (prompt of one, completion of another) pairs within each (H, W, think) group (TRL: the
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
    from accelerate import Accelerator

    if cfg.method not in ("dpo", "kto"):
        raise ValueError(f"unknown method {cfg.method!r}; use dpo or kto")
    torch.set_num_threads(cfg.threads)
    accel = Accelerator(cpu=not torch.cuda.is_available())
    progress = Progress(cfg.progress if accel.is_main_process else None, cfg.method, 0)
    try:
        return _train(cfg, accel, progress)
    except BaseException as e:
        progress.finish("cancelled" if isinstance(e, KeyboardInterrupt) else "failed", f"{type(e).__name__}: {e}")
        raise


def _train(cfg: PrefConfig, accel: Any, progress: Progress) -> Path | None:
    from feedback.store import Store

    t_start = time.time()
    main_proc = accel.is_main_process
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.data)
    parent = load_base(cfg.bundle, accel.device)
    bundle = load_base(cfg.bundle, accel.device)
    bundle.path = None
    if cfg.method == "dpo":
        items, data_info = load_dpo_data(store, parent, cfg.use_stars)
        need = 1
    else:
        items, data_info = load_kto_data(store, parent)
        need = 2
    if len(items) < need:
        raise SystemExit(f"not enough ratings for {cfg.method.upper()}: {data_info}")
    accel.print(f"{cfg.method.upper()} data: {data_info}")

    # reference log-probs, once (the reference never changes)
    seq = SeqLogp()
    flat = [e for it in items for e in ((it[0], it[1]) if cfg.method == "dpo" else (it[0],))]
    ref_lp: dict[int, float] = {}
    with torch.no_grad():
        for i in range(0, len(flat), 16):
            chunk = flat[i : i + 16]
            for e, v in zip(chunk, seq.examples(parent, chunk).tolist(), strict=True):
                ref_lp[e.candidate_id] = v

    policy = Policy(bundle, cfg.lora, cfg.lora_r, cfg.lora_alpha)
    lr = cfg.lr if cfg.lr is not None else (5e-5 if cfg.lora else 5e-6)
    opt = make_optimizer(policy, lr, cfg.weight_decay)
    params = list(policy.named_trainable().values())
    per_epoch = math.ceil(math.ceil(len(items) / accel.num_processes) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    progress.data["steps"] = total
    state = load_checkpoint(out, policy, opt)
    step = state["step"] if state else 0
    history = state.get("history", []) if state else []
    metrics_before = state.get("eval_before") if state else None
    if state:
        accel.print(f"resumed from step {step}")
        progress.data["history"] = list(history)
        progress.start_step = step
    if main_proc and cfg.eval_n and metrics_before is None and step == 0:
        metrics_before = heldout(parent, cfg)
    del parent.lm  # only its config/tokenizer/vq are needed from here on (the card, the new bundle)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb")) if main_proc else None
    policy.train_mode(True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    while step < total:
        epoch, b = divmod(step, per_epoch)
        batches = batches_for_epoch(len(items), cfg.batch_size, cfg.seed, epoch, accel.process_index,
                                    accel.num_processes)
        batch = [items[i] for i in batches[b]] if b < len(batches) else []
        n_global = global_sum(accel, len(batch))
        opt.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        if batch:
            if cfg.method == "dpo":
                loss_sum, stats = _dpo_batch(policy, seq, batch, ref_lp, cfg)
            else:
                loss_sum, stats = _kto_batch(policy, seq, batch, ref_lp, cfg)
            loss = loss_sum * accel.num_processes / n_global  # summed over processes = global mean
            loss.backward()
            loss_val = float(loss_sum.detach()) / len(batch)
        else:
            loss_val = float("nan")
        average_gradients(accel, params)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        step += 1
        rec = {"step": step, "loss": round(loss_val, 6), **{k: round(v, 5) for k, v in stats.items()}}
        history.append(rec)
        if writer:
            writer.add_scalar("train/loss", loss_val, step)
            for k, v in stats.items():
                writer.add_scalar(f"train/{k}", v, step)
        if main_proc:
            progress.step(step, loss=rec["loss"], reward=stats.get("reward_margin", stats.get("reward")))
            accel.print(f"step {step}/{total} loss {loss_val:.4f} " + " ".join(f"{k} {v:.3f}" for k, v in stats.items()))
        if step % cfg.ckpt_every == 0 or step == total:
            if main_proc:
                save_checkpoint(out, policy, opt, step, {"history": history, "eval_before": metrics_before})
            accel.wait_for_everyone()
    if writer:
        writer.close()
    leave_process_group(accel)
    if not main_proc:
        return None
    parent_cfg = load_base_config(cfg.bundle)
    name = cfg.name or f"{parent_cfg.config.name}-{cfg.method}"
    path = output_path(cfg.bundle_out, cfg.data or str(store.data_dir), name, out)
    wall = time.time() - t_start
    metrics: dict[str, Any] = {"steps": step, "epochs": cfg.epochs, "wall_time_s": round(wall, 1),
                               "loss_first": history[0]["loss"] if history else None,
                               "loss_last": history[-1]["loss"] if history else None}
    for k in ("reward_accuracy", "reward_margin"):
        vals = [h[k] for h in history[-per_epoch:] if k in h]
        if vals:
            metrics[f"{k}_last_epoch"] = round(sum(vals) / len(vals), 4)
    card = {"data": {"store": str(store.data_dir), **data_info},
            "settings": {"method": cfg.method, "beta": cfg.beta, "lr": lr, "epochs": cfg.epochs,
                         "batch_size": cfg.batch_size, "lora": cfg.lora, "use_stars": cfg.use_stars,
                         "processes": accel.num_processes},
            "metrics": metrics}
    write_bundle(policy, path, name, cfg.method, parent_cfg, card)
    if cfg.eval_n:
        from engine.bundle import load_bundle

        after = heldout(load_bundle(path), cfg)
        metrics["eval_before"], metrics["eval_after"] = metrics_before, after
        from training.grpo import print_before_after

        print_before_after(metrics_before, after)
        write_card(path, card)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{cfg.method.upper()} done: {step} steps in {wall:.0f} s; bundle written to {path}")
    progress.finish("done", f"bundle written to {path}", bundle=str(path))
    return path


def load_base_config(path: str) -> Any:
    """The parent bundle's config and weights hash, for the card (without keeping its LM in memory)."""
    from engine.bundle import Bundle, read_bundle_config

    # a Bundle with a path hashes its weight files; the LM itself is not needed for that
    return Bundle(config=read_bundle_config(path), lm=None, tokenizer=None, vq=None, path=Path(path))


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


def heldout(bundle: Any, cfg: PrefConfig) -> dict:
    from training.eval import evaluate, load_samples

    samples = load_samples(cfg.eval_sets, cfg.eval_split, n_per_kind=cfg.eval_n, corpus=cfg.corpus)
    res = evaluate(bundle, samples, think=cfg.think_eval, seed=cfg.seed, progress=False)
    print(res.table())
    return {"overall": res.overall, "by_kind": res.by_kind(), "n": res.n}


def main(argv: list[str] | None = None) -> int:
    from training.grpo import config_parser

    ap = config_parser(PrefConfig, prog="python -m training.preference", description=__doc__)
    train(PrefConfig(**vars(ap.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
