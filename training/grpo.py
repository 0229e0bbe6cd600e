"""GRPO, EARL's RL recipe, online on the synthetic editing suite. Readable top to bottom.

    python -m training.grpo --bundle assets/earl-nano --reward verifier --steps 200 --out runs/grpo \\
        --data ~/.earl-studio --name earl-nano-grpo --eval-n 2          # before/after held-out scores
    accelerate launch --num_processes 2 --cpu -m training.grpo ...      # several processes (gloo on CPU)
    accelerate launch --config_file docs/accelerate_multigpu.yaml -m training.grpo ...   # several GPUs

Per iteration and process: ``prompts_per_step`` (photo, instruction) pairs from ``training.data.suite``; for
each, a group of G candidates from the engine's sampler (temperature 1.0, per-token log-probs kept);
rewards (``training.rewards``); advantage A = (r − mean) / (std + 1e-4) within the group, applied to
every generated token; groups whose rewards do not vary carry no signal and are dropped (counted).
The log-probs are recomputed with gradients by ``engine.logprobs.sequence_logprobs`` — the same
constraint masks as sampling, separate text / vision softmaxes — and the loss per token is

    −(π/π_old)·A + β·(exp(ref − logp) − (ref − logp) − 1)        (k3 KL estimator, β = 3e-4)

averaged over each sequence's chosen (non-forced) tokens, then over sequences; one optimizer step per
iteration (π_old = π: the ratio is 1 but carries the gradient). ``--clip-eps`` turns on PPO's clipped
ratio, useful with ``--updates-per-batch`` > 1. The run resumes from ``<out>/checkpoint`` exactly
(sampling seeds and the data stream are functions of the step). At the end the LoRA (if any) is merged
and the model is written as a new bundle version with a README card. The base model, policy, reference,
optimizer, checkpoints and output bundle are ``training.tuning.FineTune``'s, shared with DPO and KTO.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.bundle import transpose_default
from engine.constraint import constraint_for
from engine.generate import generate
from engine.image_io import fit_to_area
from engine.logprobs import sequence_logprobs
from engine.sampler import fp16_default
from training.common import parse_config
from training.rewards import Reward, RewardSample, make_reward
from training.tuning import FineTune, Policy, TuneConfig, global_sum

# default learning rates (cfg.lr None): full fine-tuning, LoRA
LR = (1e-5, 1e-4)


@dataclass
class GRPOConfig(TuneConfig):
    out: str = "runs/grpo"
    reward: str = "verifier"  # verifier | judge | reward_model | mix "verifier:0.7,judge:0.3"
    judge_url: str | None = None  # OpenAI-compatible endpoint root, e.g. http://localhost:8000/v1
    judge_model: str = "Qwen/Qwen2.5-VL-72B-Instruct"
    judge_path: str | None = None  # local transformers VLM folder
    reward_model: str | None = None  # folder written by training.reward_model
    kinds: str = ""  # comma-separated edit kinds (default: all)
    steps: int = 200
    group_size: int = 8
    prompts_per_step: int = 1
    beta: float = 3e-4
    temperature: float = 1.0
    top_k: int = 0  # 0: sample from the policy itself, so the gradient is unbiased
    think_prob: float = 0.0  # share of groups in think-then-edit mode
    max_new_tokens: int | None = None  # think mode: reasoning budget + image
    clip_eps: float = 0.0  # 0: no ratio clipping (EARL); e.g. 0.2 for PPO-style clipping
    updates_per_batch: int = 1
    log_every: int = 1
    image_every: int = 10
    # Rollouts decode with half-precision copies of the policy's weights (engine.sampler's fp16 path, the
    # studio's): "auto" where engine.edit would (a small float32 LM on a CPU with fbgemm), "true", "false".
    # The loss recomputes every log-prob in float32, so only which tokens get sampled can differ, by far
    # less than one update moves the policy (benchmarks.fp16_decoding --group 8 measures it).
    fp16_rollouts: str = "auto"


def advantages(rewards: list[float | None]) -> list[float | None] | None:
    """EARL's group advantage (r − mean) / (std + 1e-4) over the scored members; None when the group
    carries no signal (fewer than two scored members, or all rewards equal)."""
    idx = [i for i, r in enumerate(rewards) if r is not None]
    if len(idx) < 2:
        return None
    r = torch.tensor([rewards[i] for i in idx], dtype=torch.float64)
    std = r.std()  # unbiased, as in EARL's / TRL's GRPO
    if float(std) == 0.0:
        return None
    a = ((r - r.mean()) / (std + 1e-4)).tolist()
    out: list[float | None] = [None] * len(rewards)
    for i, v in zip(idx, a, strict=True):
        out[i] = v
    return out


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, adv: torch.Tensor,
                    mask: torch.Tensor, beta: float, clip_eps: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Mean over sequences of the mean over each sequence's ``mask``ed tokens of
    −min(ρA, clip(ρ)A) + β·k3, ρ = exp(logp − old_logp). Shapes (B, T); ``adv`` (B,)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    pg = ratio * a
    if clip_eps > 0:
        pg = torch.minimum(pg, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1
    per_token = -pg + beta * kl
    m = mask.float()
    n = m.sum(1).clamp(min=1)
    loss = ((per_token * m).sum(1) / n).mean()
    with torch.no_grad():
        stats = {"kl": float(((kl * m).sum(1) / n).mean()),
                 "clip_frac": float((((ratio - 1).abs() > clip_eps) & mask).float().sum() / m.sum().clamp(min=1))
                 if clip_eps > 0 else 0.0}
    return loss, stats


class SuitePrompts:
    """(sample, source image fitted to the bundle) for step ``step``, process ``rank``: deterministic, so
    a resumed run sees the same data."""

    def __init__(self, cfg: GRPOConfig, bundle: Any, rank: int) -> None:
        from training.data import suite

        self.suite, self.cfg, self.bundle, self.rank = suite, cfg, bundle, rank
        kinds = [k for k in cfg.kinds.split(",") if k] or None
        corpus = cfg.corpus if cfg.corpus and (Path(cfg.corpus) / "manifest.jsonl").exists() else None
        self.photos = suite.split_photos("train", corpus)
        self.kinds = list(kinds or suite.KINDS)
        bad = [k for k in self.kinds if k not in suite.KINDS]
        if bad:
            raise ValueError(f"unknown edit kinds {bad}; known: {list(suite.KINDS)}")

    def get(self, step: int, j: int) -> dict:
        i = (step * self.cfg.prompts_per_step + j)
        rng = np.random.default_rng([self.cfg.seed, 7919, self.rank, i])
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        s = self.suite.make_sample(kind, self.photos, rng, f"grpo-{self.rank}-{i}", self.bundle.config.image_area)
        area, sf = self.bundle.config.image_area, self.bundle.vq.spatial_factor
        s["source"] = fit_to_area(s["source"], area, sf)
        s["think"] = bool(rng.random() < self.cfg.think_prob)
        return s


def sample_seed(cfg: GRPOConfig, step: int, rank: int, j: int) -> int:
    return (cfg.seed * 1_000_003 + step * 10_007 + rank * 101 + j) * 64 % (2**31 - 64)


def rollout_fp16(bundle: Any, cfg: GRPOConfig) -> bool:
    """Whether rollouts decode with half-precision weights (``cfg.fp16_rollouts``)."""
    if cfg.fp16_rollouts not in ("auto", "true", "false"):
        raise ValueError(f"fp16_rollouts must be auto, true or false, got {cfg.fp16_rollouts!r}")
    return fp16_default(bundle) if cfg.fp16_rollouts == "auto" else cfg.fp16_rollouts == "true"


def run_group(policy: Policy, s: dict, seeds: list[int], cfg: GRPOConfig, reward: Reward) -> dict:
    """Sample a group for one suite sample and score it."""
    bundle = policy.bundle
    grid = np.asarray(bundle.vq.encode([s["source"]])[0], dtype=np.int64)
    h, w = grid.shape
    policy.train_mode(False)
    gens = generate(bundle, [grid] * len(seeds), [s["instruction"]] * len(seeds), seeds, think=s["think"],
                    temperature=cfg.temperature, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                    fp16=rollout_fp16(bundle, cfg))
    policy.train_mode(True)
    prompt = gens[0].prompt
    outputs = [g.image for g in gens]  # None: unfinished or malformed, a failed edit (reward 0 from the verifier)
    samples = [RewardSample(source=s["source"], output=o, instruction=s["instruction"], target=s["target"],
                            mask=s["mask"], kind=s["kind"], prompt_ids=prompt, gen_ids=g.tokens, grid_hw=(h, w),
                            think=s["think"]) for o, g in zip(outputs, gens, strict=True)]
    rewards = reward.score(samples)
    return {"prompt": prompt, "gens": gens, "h": h, "w": w, "think": s["think"], "rewards": rewards,
            "outputs": outputs, "sample": s}


def group_loss(policy: Policy, grp: dict, adv: list[float | None],
               cfg: GRPOConfig) -> tuple[torch.Tensor, int, dict]:
    """Loss of one group's scored members (sum over sequences, divided by the caller)."""
    keep = [i for i, a in enumerate(adv) if a is not None]
    gens = [grp["gens"][i].tokens for i in keep]
    h, w, think = grp["h"], grp["w"], grp["think"]
    bundle = policy.bundle
    n_max = max(len(g) for g in gens)
    # the rollouts' constraint (``generate``'s default: the bundle's header choice)
    con = constraint_for(bundle.tokenizer, h, w, think, bundle.lm.config.vocab_size, cfg.max_new_tokens,
                         transpose=transpose_default(bundle))
    # the model's choices (text, visual, header choice); forced tokens have log-prob 0
    mask = torch.zeros((len(gens), n_max), dtype=torch.bool)
    for b, g in enumerate(gens):
        mask[b, : len(g)] = con.chosen(con.replay(g)[0])
    prompts = [grp["prompt"]] * len(gens)
    with torch.no_grad(), policy.reference() as ref:
        ref_logp = sequence_logprobs(ref, prompts, gens, h, w, think, constraint=con)
    logp = sequence_logprobs(bundle, prompts, gens, h, w, think, constraint=con)
    sampled = torch.zeros_like(logp)
    for b, i in enumerate(keep):
        lp = grp["gens"][i].logprobs
        sampled[b, : len(lp)] = torch.tensor(lp)
    mask = mask.to(logp.device)
    old = grp.setdefault("old_logp", logp.detach())  # π_old: the policy that sampled (first update)
    a = torch.tensor([adv[i] for i in keep], dtype=logp.dtype, device=logp.device)
    loss, stats = grpo_token_loss(logp, old, ref_logp, a, mask, cfg.beta, cfg.clip_eps)
    # sampler vs training log-probs: same definition, so this stays at float rounding level
    stats["logprob_mismatch"] = float(((logp.detach() - sampled.to(logp.device)).abs() * mask).max())
    return loss * len(keep), len(keep), stats


def tb_image(grp: dict) -> np.ndarray:
    """source | target | best | worst candidate, as a CHW uint8 array for TensorBoard."""
    r = [v if v is not None else -1.0 for v in grp["rewards"]]
    best, worst = int(np.argmax(r)), int(np.argmin(r))
    s = grp["sample"]
    size = s["target"].size
    ims = [s["source"].resize(size), s["target"]]
    for i in (best, worst):
        o = grp["outputs"][i]
        ims.append(o.resize(size) if o is not None else s["target"].point(lambda _: 0))
    row = np.concatenate([np.asarray(im.convert("RGB")) for im in ims], axis=1)
    return row.transpose(2, 0, 1)


def train(cfg: GRPOConfig) -> Path | None:
    """Run GRPO as configured; the new bundle's folder (None on processes other than the main one)."""
    ft = FineTune(cfg, "grpo", steps=cfg.steps)
    return ft.run(lambda: _train(cfg, ft))


def _train(cfg: GRPOConfig, ft: FineTune) -> Path | None:
    accel, main_proc = ft.accel, ft.main
    data = SuitePrompts(cfg, ft.base, accel.process_index)
    ft.eval_before(think=cfg.think_prob >= 0.5)
    policy = ft.start(*LR)
    reward = make_reward(cfg.reward, None, cfg.judge_url, cfg.judge_model, cfg.judge_path, cfg.reward_model)
    totals = ft.state.get("totals", {"groups": 0, "dropped": 0, "skipped_samples": 0})
    n_params = sum(p.numel() for p in ft.params)
    accel.print(f"GRPO: {'LoRA' if cfg.lora else 'full'} fine-tuning, {n_params / 1e6:.2f}M trainable params, "
                f"G={cfg.group_size}, beta={cfg.beta}, reward={cfg.reward}, {accel.num_processes} process(es)")
    writer, opt = ft.writer, ft.opt
    t0 = time.time()
    while ft.step < cfg.steps:
        step = ft.step
        groups = []
        for j in range(cfg.prompts_per_step):
            s = data.get(step, j)
            seeds = [sample_seed(cfg, step, accel.process_index, j) + g for g in range(cfg.group_size)]
            groups.append(run_group(policy, s, seeds, cfg, reward))
        advs = [advantages(g["rewards"]) for g in groups]
        kept = [(g, a) for g, a in zip(groups, advs, strict=True) if a is not None]
        n_seq_local = sum(sum(x is not None for x in a) for _, a in kept)
        n_seq = global_sum(accel, n_seq_local)
        stats_acc: dict[str, list[float]] = {}
        loss_val = 0.0
        for _ in range(cfg.updates_per_batch):
            opt.zero_grad(set_to_none=True)
            loss_val = 0.0
            for g, a in kept:
                # each process divides by the global count, so the summed gradients are the global mean
                loss, _, st = group_loss(policy, g, a, cfg)
                loss = loss * accel.num_processes / max(n_seq, 1)
                loss.backward()
                loss_val += float(loss.detach()) / accel.num_processes
                for k, v in st.items():
                    stats_acc.setdefault(k, []).append(v)
            if n_seq == 0:
                break  # nothing to learn from anywhere this iteration: no step (AdamW would still move)
            ft.update()
        step = ft.step = step + 1
        r_all = [r for g in groups for r in g["rewards"] if r is not None]
        n_groups, n_drop = len(groups), len(groups) - len(kept)
        totals["groups"] += int(global_sum(accel, n_groups))
        totals["dropped"] += int(global_sum(accel, n_drop))
        totals["skipped_samples"] += int(global_sum(accel, sum(r is None for g in groups for r in g["rewards"])))
        r_sum, r_sq, r_n = (global_sum(accel, v) for v in (sum(r_all), sum(x * x for x in r_all), len(r_all)))
        r_mean = r_sum / r_n if r_n else float("nan")
        r_std = math.sqrt(max(r_sq / r_n - r_mean**2, 0.0)) if r_n else float("nan")
        kl = float(np.mean(stats_acc["kl"])) if stats_acc.get("kl") else 0.0
        drop_frac = global_sum(accel, n_drop) / max(global_sum(accel, n_groups), 1)
        rec = {"step": step, "loss": round(loss_val, 6), "reward": round(r_mean, 4), "reward_std": round(r_std, 4),
               "kl": kl, "dropped_frac": drop_frac}
        ft.record(rec, loss=rec["loss"], reward=rec["reward"], kl=kl, dropped_frac=drop_frac)
        if writer and step % cfg.log_every == 0:
            writer.add_scalar("reward/mean", r_mean, step)
            writer.add_scalar("reward/std", r_std, step)
            writer.add_scalar("train/loss", loss_val, step)
            writer.add_scalar("train/kl", kl, step)
            writer.add_scalar("groups/dropped_frac", drop_frac, step)
            writer.add_scalar("groups/dropped_total", totals["dropped"], step)
            if stats_acc.get("logprob_mismatch"):
                writer.add_scalar("train/logprob_mismatch", max(stats_acc["logprob_mismatch"]), step)
            if cfg.clip_eps > 0 and stats_acc.get("clip_frac"):
                writer.add_scalar("train/clip_frac", float(np.mean(stats_acc["clip_frac"])), step)
            writer.add_scalar("train/sec_per_step", (time.time() - t0) / max(1, len(ft.history)), step)
        if writer and cfg.image_every and step % cfg.image_every == 0:
            writer.add_image("samples/source_target_best_worst", tb_image(groups[0]), step)
        if main_proc:
            accel.print(f"step {step}/{cfg.steps} loss {loss_val:.4f} reward {r_mean:.3f}±{r_std:.3f} kl {kl:.2e} "
                        f"dropped {n_drop}/{n_groups}")
        ft.checkpoint(cfg.steps, {"totals": totals})
    history = ft.history
    metrics: dict[str, Any] = {
        "steps": ft.step, "wall_time_s": round(time.time() - ft.t_start, 1),
        "reward_first10": _mean([h["reward"] for h in history[:10]]),
        "reward_last10": _mean([h["reward"] for h in history[-10:]]),
        "kl_last10": _mean([h["kl"] for h in history[-10:]]),
        "dropped_groups": f"{totals['dropped']}/{totals['groups']}", "skipped_samples": totals["skipped_samples"],
    }
    card = {"data": {"suite": "training.data.suite train split (synthetic edits, exact ground truth)",
                     "kinds": cfg.kinds or "all", "corpus": cfg.corpus, "reward": cfg.reward},
            "settings": {k: v for k, v in asdict(cfg).items() if k in (
                "group_size", "prompts_per_step", "beta", "temperature", "top_k", "think_prob", "clip_eps",
                "updates_per_batch", "lora", "lora_r", "seed")} | {"lr": ft.lr, "processes": accel.num_processes},
            "metrics": metrics}
    return ft.finish(cfg.data, card, think=cfg.think_prob >= 0.5)


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return round(float(np.mean(xs)), 4) if xs else None


def main(argv: list[str] | None = None) -> int:
    train(parse_config(GRPOConfig, argv, prog="python -m training.grpo", description=__doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
