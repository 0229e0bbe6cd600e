"""A Bradley–Terry reward model learned from the studio's ratings.

    python -m training.reward_model --data ~/.earl-studio --bundle assets/earl-nano --out <data>/reward_models/rm1

Design: a small MLP head on **frozen** features of the bundle's LM. The features are the last hidden state
at the end of the prompt (the model's reading of source photo + instruction) concatenated with the
mean hidden state over the generated tokens (the edit it produced, in the context of that prompt).
Why not a CNN on pixels: a reward must judge the edit *against the instruction*, and only the LM
understands our instructions; with a few hundred ratings a from-scratch image model mostly learns
the raters' colour taste. Frozen features make training a matter of seconds on CPU (features are
computed once) and leave ~2·hidden·64 parameters to fit, which suits hundreds of pairs.
The feature bundle is loaded separately from any policy being trained, so RL cannot move the reward.

Loss: -log σ(r(chosen) − r(rejected)) over A/B pairs, best-of-N pairs and star pairs (higher beats lower).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine.layout import grid_positions
from engine.logprobs import base_lm, embed_inputs
from training.common import Progress, parse_config


class RewardHead(nn.Module):
    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@torch.no_grad()
def lm_features(bundle: Any, prompt_ids: Sequence[int], gen_ids: Sequence[int]) -> torch.Tensor:
    """(2·hidden,) frozen features of one (prompt, generation): [h(end of prompt), mean h(generation)]."""
    ids = list(prompt_ids) + list(gen_ids)
    t = torch.tensor([ids], device=bundle.device)
    pos = tuple(p[None] for p in grid_positions(bundle.tokenizer, ids))
    emb = embed_inputs(bundle, t, pos)
    hidden = base_lm(bundle.lm).model(inputs_embeds=emb, use_cache=False).last_hidden_state[0].float()
    n = len(prompt_ids)
    return torch.cat([hidden[n - 1], hidden[n:].mean(0)]).cpu()


class RewardModel:
    """Head + the frozen feature bundle. ``score_samples`` takes ``rewards.RewardSample``s with tokens."""

    def __init__(self, bundle: Any, head: RewardHead, meta: dict[str, Any]) -> None:
        self.bundle, self.head, self.meta = bundle, head.eval(), meta

    def score_tokens(self, prompt_ids: Sequence[int], gen_ids: Sequence[int]) -> float:
        with torch.no_grad():
            return float(self.head(lm_features(self.bundle, prompt_ids, gen_ids)[None])[0])

    def score_samples(self, samples: Sequence[Any]) -> list[float | None]:
        # samples without tokens (e.g. images from elsewhere) cannot be read by this model
        return [self.score_tokens(s.prompt_ids, s.gen_ids) if s.prompt_ids and s.gen_ids else None for s in samples]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(folder / "head.safetensors"))
        (folder / "reward_model.json").write_text(json.dumps(self.meta, indent=2))
        return folder


def load_reward_model(folder: str | Path, bundle: Any = None) -> RewardModel:
    """Load a reward model; its feature bundle from the recorded path unless ``bundle`` is given
    (pass a frozen bundle — never the policy being trained)."""
    folder = Path(folder)
    meta_file = folder / "reward_model.json"
    if not meta_file.is_file():
        raise ValueError(f"{folder} is not a reward model folder (no reward_model.json)")
    meta = json.loads(meta_file.read_text())
    if bundle is None:
        from engine.bundle import load_bundle

        bundle = load_bundle(meta["bundle_path"])
        bundle.lm.requires_grad_(False)
    head = RewardHead(meta["dim"], meta["head_hidden"])
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    return RewardModel(bundle, head, meta)


def train_reward_model(bundle: Any, store: Any, out: str | Path, epochs: int = 200, lr: float = 3e-3,
                       head_hidden: int = 64, val_frac: float = 0.2, seed: int = 0, use_stars: bool = True,
                       bundle_path: str | None = None) -> RewardModel:
    """Fit the head on the store's pairs; writes ``out`` and returns the model. meta holds accuracies."""
    from feedback.pairs import StoreExamples, rated_pairs

    ex = StoreExamples(bundle, store)
    feats: dict[int, torch.Tensor] = {}
    pairs: list[tuple[int, int]] = []
    for chosen, rejected, _ in rated_pairs(store, use_stars):
        a, b = ex.example(chosen), ex.example(rejected)
        if a is None or b is None:
            continue
        for e in (a, b):
            if e.candidate_id not in feats:
                feats[e.candidate_id] = lm_features(bundle, e.prompt_ids, e.gen_ids)
        pairs.append((a.candidate_id, b.candidate_id))
    if len(pairs) < 2:
        raise ValueError(f"only {len(pairs)} usable preference pairs in the store; rate more edits first "
                         f"(skipped: {dict(ex.skipped)})")
    rng = random.Random(seed)
    rng.shuffle(pairs)
    n_val = max(1, int(len(pairs) * val_frac)) if len(pairs) >= 5 else 0
    val, train = pairs[:n_val], pairs[n_val:]
    torch.manual_seed(seed)
    dim = next(iter(feats.values())).numel()
    head = RewardHead(dim, head_hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)

    def stack(ps: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([feats[a] for a, _ in ps]), torch.stack([feats[b] for _, b in ps])

    xc, xr = stack(train)
    for _ in range(epochs):
        loss = -F.logsigmoid(head(xc) - head(xr)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()

    def accuracy(ps: list[tuple[int, int]]) -> float | None:
        if not ps:
            return None
        a, b = stack(ps)
        with torch.no_grad():
            return float((head(a) > head(b)).float().mean())

    meta = {
        "dim": dim, "head_hidden": head_hidden, "bundle_path": str(bundle_path or bundle.path),
        "bundle_id": f"{bundle.config.name}@{bundle.config.version}", "weights_hash": bundle.weights_hash(),
        "pairs_train": len(train), "pairs_val": len(val), "train_loss": float(loss.detach()),
        "train_accuracy": accuracy(train), "val_accuracy": accuracy(val), "skipped": dict(ex.skipped),
    }
    rm = RewardModel(bundle, head, meta)
    rm.save(out)
    return rm


@dataclass
class RewardModelConfig:
    data: str | None = None  # studio data folder (default $EARL_STUDIO_DATA or ~/.earl-studio)
    bundle: str = "assets/earl-nano"  # the bundle whose frozen LM gives the features
    out: str = ""  # the reward model's folder
    epochs: int = 200
    stars: bool = True  # learn from star ratings too (--no-stars: pairs only)
    progress: str | None = None  # JSON progress file (training.jobs)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_config(RewardModelConfig, argv, prog="python -m training.reward_model", description=__doc__)
    if not a.out:
        raise SystemExit("--out: the folder to write the reward model to")
    torch.set_num_threads(1)
    from engine.bundle import load_bundle
    from feedback.store import Store

    progress = Progress(a.progress, "reward_model", 1)
    try:
        bundle = load_bundle(a.bundle)
        bundle.lm.requires_grad_(False)
        rm = train_reward_model(bundle, Store(a.data), a.out, epochs=a.epochs, use_stars=a.stars,
                                bundle_path=str(Path(a.bundle).resolve()))
    except BaseException as e:
        progress.finish("failed", f"{type(e).__name__}: {e}")
        raise
    progress.step(1, loss=rm.meta["train_loss"], reward=rm.meta["val_accuracy"])
    progress.finish("done", f"reward model written to {a.out}", reward_model=str(a.out))
    print(json.dumps(rm.meta, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
