"""The fine-tune scaffold GRPO, DPO and KTO share: their common settings (``TuneConfig``), the base model
loaded once, the trainable policy (LoRA or full) and its frozen reference, the optimizer, gradient
averaging across processes, resumable checkpoints, and the output bundle with its card (``FineTune``).

- LoRA (peft) on Emu3's attention and MLP projections; the reference is the same model with the adapter
  disabled (no second copy in memory). Full fine-tuning trains the LM and the grid embedding; the
  reference is a frozen copy of them (the tokenizer and image tokenizer are shared), made only when
  the method reads the reference during training.
- Several processes (``accelerate launch``): every process samples/loads its own data and the gradients
  are averaged with one all-reduce per parameter before the optimizer step. We do not wrap the LM in
  DDP because ``engine.logprobs.sequence_logprobs`` calls the decoder directly (not ``forward``), which
  DDP's reducer would not see.
- Checkpoints: ``<out>/checkpoint/{trainable.safetensors, state.pt}`` (fp32 trainable tensors, optimizer,
  step, RNG states, loop counters), written with ``training.common.write_atomic``, so a kill at any
  moment leaves the previous or the new checkpoint complete. Resuming reloads the base bundle, rebuilds
  the same LoRA/full setup and loads the tensors: the run continues exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.bundle import Bundle, load_bundle, read_bundle_config, save_bundle
from training.common import Progress, latest, write_atomic


@dataclass
class TuneConfig:
    """Settings every fine-tuning method has; ``GRPOConfig`` and ``PrefConfig`` add their own."""

    bundle: str = "assets/earl-nano"  # the base model
    out: str = "runs/tune"  # checkpoints, TensorBoard logs, metrics
    data: str | None = None  # studio data folder: the new bundle goes to <data>/bundles/<name>
    name: str = ""  # new bundle's name (default: <parent name>-<method>)
    bundle_out: str | None = None  # explicit folder for the new bundle (overrides data/name)
    lr: float | None = None  # default: the method's, for full or LoRA fine-tuning
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0
    ckpt_every: int = 20
    threads: int = 1
    eval_n: int = 0  # held-out samples per kind scored before and after (0: skip)
    eval_split: str = "val"
    eval_sets: str = "data/suite"
    corpus: str | None = "data/corpus"  # photos for the suite (missing: scikit-image's)
    progress: str | None = None  # JSON progress file (training.jobs)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Policy:
    """The bundle being trained (in place) plus a way to run its frozen reference. ``reference`` False
    (full fine-tuning only) makes no copy for the reference, for a method that never reads it in training."""

    def __init__(self, bundle: Bundle, lora: bool, lora_r: int = 16, lora_alpha: int = 32,
                 reference: bool = True) -> None:
        self.lora = lora
        self.bundle = bundle
        self.ref_bundle: Bundle | None = None
        bundle.lm.requires_grad_(False)
        if bundle.grid_embed is not None:
            bundle.grid_embed.requires_grad_(False)
        if lora:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                             bias="none")
            bundle.lm = get_peft_model(bundle.lm, cfg)
        else:
            if reference:
                ref = Bundle(bundle.config, copy.deepcopy(bundle.lm), bundle.tokenizer, bundle.vq,
                             copy.deepcopy(bundle.grid_embed) if bundle.grid_embed is not None else None, None)
                ref.lm.eval()
                self.ref_bundle = ref
            bundle.lm.requires_grad_(True)
            if bundle.grid_embed is not None:
                bundle.grid_embed.requires_grad_(True)

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        out = {f"lm.{n}": p for n, p in self.bundle.lm.named_parameters() if p.requires_grad}
        if self.bundle.grid_embed is not None:
            out.update({f"grid_embed.{n}": p for n, p in self.bundle.grid_embed.named_parameters() if p.requires_grad})
        return out

    @contextlib.contextmanager
    def reference(self) -> Iterator[Bundle]:
        """The frozen reference bundle (LoRA: the adapter disabled for the duration)."""
        if self.lora:
            with self.bundle.lm.disable_adapter():
                yield self.bundle
        elif self.ref_bundle is None:
            raise RuntimeError("this policy was made without a reference (Policy(..., reference=False))")
        else:
            yield self.ref_bundle

    def train_mode(self, on: bool) -> None:
        self.bundle.lm.train(on)
        if self.bundle.grid_embed is not None:
            self.bundle.grid_embed.train(on)

    def merged_bundle(self) -> Bundle:
        """A plain bundle with the LoRA merged into the weights (a copy; training state untouched)."""
        lm = self.bundle.lm
        if self.lora:
            lm = copy.deepcopy(lm).merge_and_unload()
        return Bundle(copy.deepcopy(self.bundle.config), lm, self.bundle.tokenizer, self.bundle.vq,
                      self.bundle.grid_embed, None)


def make_optimizer(policy: Policy, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = list(policy.named_trainable().values())
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)


def average_gradients(accel: Any, params: list[torch.nn.Parameter]) -> None:
    """Mean of the gradients over processes (no-op with one process). Missing grads count as zeros."""
    if accel.num_processes == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= accel.num_processes


def global_sum(accel: Any, value: float) -> float:
    """Sum of a number over processes."""
    if accel.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], device=accel.device)
    return float(accel.reduce(t, reduction="sum")[0])


def leave_process_group(accel: Any) -> None:
    """Every process leaves the process group together once the loop is done: a rank that exits while the
    group is still up can abort in gloo's teardown. Afterwards the main process writes the bundle alone."""
    accel.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# -- checkpoints ----------------------------------------------------------------------------------------


def save_checkpoint(out: Path, policy: Policy, opt: torch.optim.Optimizer, step: int, extra: dict) -> None:
    """``<out>/checkpoint``: the trainable tensors (fp32), the optimizer, the step, the RNG and ``extra``.
    Out of disk space: ``NoSpaceError`` naming the folder and the space needed; the previous checkpoint
    stays as it was."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in policy.named_trainable().items()}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "trainable.safetensors"))
        state = {"opt": opt.state_dict(), "step": step, "torch_rng": torch.get_rng_state(), **extra}
        torch.save(state, tmp / "state.pt")  # last: a folder with state.pt is complete

    prev = latest(out / "checkpoint", marker="state.pt")
    kept = (f"The previous checkpoint in {prev} is kept; resume the job once space is freed." if prev
            else "There is no earlier checkpoint.")
    need = sum(t.numel() * 4 for t in tensors.values()) * 3 + (1 << 20)  # weights + Adam's two moments
    write_atomic(out / "checkpoint", write, what=f"the checkpoint of step {step}", need=need, kept=kept)


def has_checkpoint(out: Path) -> bool:
    return latest(out / "checkpoint", marker="state.pt") is not None


def load_checkpoint(out: Path, policy: Policy, opt: torch.optim.Optimizer) -> dict | None:
    """Restore the latest checkpoint into ``policy``/``opt``; its state dict, or None when there is none."""
    ckpt = latest(out / "checkpoint", marker="state.pt")
    if ckpt is None:
        return None
    tensors = load_file(str(ckpt / "trainable.safetensors"))
    params = policy.named_trainable()
    if set(tensors) != set(params):
        raise ValueError(f"checkpoint in {ckpt} does not match this run's trainable parameters "
                         "(LoRA vs full fine-tuning, or another base bundle?)")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k].to(p.dtype))
    state = torch.load(ckpt / "state.pt", weights_only=False)
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["torch_rng"])
    return state


# -- the base model and the output bundle ---------------------------------------------------------------


def load_base(path: str | Path, device: Any = "cpu") -> Bundle:
    """The starting bundle in float32 (optimizer updates of bf16 weights would round away)."""
    return load_bundle(path, device=device, dtype=torch.float32)


def parent_record(path: str | Path) -> Bundle:
    """The base bundle as its card needs it: its config and (hashed from its files) weights hash, no LM."""
    return Bundle(config=read_bundle_config(path), lm=None, tokenizer=None, vq=None, path=Path(path))


def output_path(bundle_out: str | None, data: str | None, name: str, out: Path) -> Path:
    if bundle_out:
        return Path(bundle_out)
    if data:
        return Path(data).expanduser() / "bundles" / name
    return out / "bundle"


def write_bundle(policy: Policy, path: Path, name: str, method: str, parent: Bundle, card: dict) -> Path:
    """Save the trained bundle (LoRA merged) as a new version with a README card; returns its folder."""
    b = policy.merged_bundle()
    pc = parent.config
    b.config.name = name
    b.config.version = time.strftime("%Y%m%d-%H%M%S") + f"-{method}"
    b.config.parent = f"{pc.name}@{pc.version}"
    b.config.notes = {**{k: v for k, v in pc.notes.items() if k != "tiny_random"}, "trained_by": f"training/{method}.py",
                      "method": method, "parent_weights_hash": parent.weights_hash(),
                      "tiny_random": pc.notes.get("tiny_random", False)}
    dtype = torch.bfloat16 if pc.family == "earl-nano" else None
    save_bundle(b, path, dtype=dtype, extras_from=parent.path)
    write_card(path, card)
    return path


def write_card(path: Path, card: dict) -> None:
    """``training.json`` (machine-readable) and ``README.md`` (the card) next to the bundle's files."""
    cfg = json.loads((path / "bundle.json").read_text())
    (path / "training.json").write_text(json.dumps(card, indent=2, default=str))
    (path / "README.md").write_text(card_markdown(cfg["name"], cfg["version"], cfg["notes"].get("method", "?"),
                                                  cfg.get("parent") or "?", card))


def card_markdown(name: str, version: str, method: str, parent: str, card: dict) -> str:
    lines = [f"# {name} @ {version}", "", f"Fine-tuned from **{parent}** with **{method.upper()}** "
             "(EARL Studio, `training/" + method + ".py`).", ""]
    for section in ("data", "settings", "metrics"):
        if card.get(section):
            lines += [f"## {section.capitalize()}", ""]
            lines += [f"- {k}: {v}" for k, v in card[section].items()]
            lines.append("")
    return "\n".join(lines)


def heldout(bundle: Bundle, cfg: TuneConfig, think: bool, when: str) -> dict:
    """Held-out verifier scores of ``bundle`` (``cfg.eval_n`` samples per kind), printed as a table."""
    from training.eval import evaluate, load_samples

    samples = load_samples(cfg.eval_sets, cfg.eval_split, n_per_kind=cfg.eval_n, corpus=cfg.corpus)
    res = evaluate(bundle, samples, think=think, seed=cfg.seed, progress=False)
    print(f"held-out {when}:\n" + res.table())
    return {"overall": res.overall, "by_kind": res.by_kind(), "n": res.n}


def print_before_after(before: dict | None, after: dict) -> None:
    if not before:
        return
    print(f"{'kind':18s} {'before':>7s} {'after':>7s} {'delta':>7s}")
    for k, v in after["by_kind"].items():
        b = before["by_kind"].get(k, float("nan"))
        print(f"{k:18s} {b:7.3f} {v:7.3f} {v - b:+7.3f}")
    print(f"{'overall':18s} {before['overall']:7.3f} {after['overall']:7.3f} {after['overall'] - before['overall']:+7.3f}")


# -- the scaffold -----------------------------------------------------------------------------------------


class FineTune:
    """One fine-tuning run, around the method's own loop:

        ft = FineTune(cfg, "grpo", steps=cfg.steps)
        return ft.run(lambda: loop(cfg, ft))

    and inside ``loop``: ``ft.base`` (the base bundle, loaded once) for whatever the method computes from
    the untrained model (held-out scores before: ``ft.eval_before``; DPO's reference log-probs), then
    ``ft.start(...)`` (policy, optimizer, resume), the method's steps with ``ft.update()``, ``ft.record()``
    and ``ft.checkpoint()``, and ``ft.finish(...)`` (the new bundle, its card, held-out scores after).
    """

    def __init__(self, cfg: TuneConfig, method: str, steps: int = 0) -> None:
        from accelerate import Accelerator

        torch.set_num_threads(cfg.threads)
        self.cfg, self.method = cfg, method
        self.accel = Accelerator(cpu=not torch.cuda.is_available())
        self.main = self.accel.is_main_process
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t_start = time.time()
        self.progress = Progress(cfg.progress if self.main else None, method, steps)
        self._base: Bundle | None = None
        self.parent: Bundle | None = None
        self.resuming = has_checkpoint(self.out)
        self.step = 0
        self.history: list[dict] = []
        self.state: dict = {}
        self.before: dict | None = None

    def run(self, loop: Callable[[], Path | None]) -> Path | None:
        """``loop()``; a failure or an interrupt is written to the progress file before it propagates."""
        try:
            return loop()
        except BaseException as e:
            self.progress.finish("cancelled" if isinstance(e, KeyboardInterrupt) else "failed",
                                 f"{type(e).__name__}: {e}")
            raise

    @property
    def base(self) -> Bundle:
        """The base bundle in float32 on this process's device, loaded once. ``start`` trains it in place
        (the policy), so read the untrained model before."""
        if self._base is None:
            self._base = load_base(self.cfg.bundle, self.accel.device)
            self._base.path = None  # its weights are about to change: no hash of the files on disk
            self.parent = parent_record(self.cfg.bundle)
        return self._base

    def eval_before(self, think: bool) -> None:
        """Held-out scores of the untrained base (main process, ``cfg.eval_n`` > 0, a fresh run)."""
        if self.main and self.cfg.eval_n and not self.resuming:
            self.before = heldout(self.base, self.cfg, think, "before")

    def start(self, lr_full: float, lr_lora: float, reference: bool = True) -> Policy:
        """Make the policy of ``base`` and its optimizer (``cfg.lr``, else ``lr_full`` / ``lr_lora``), resume
        from the run's checkpoint if there is one, write the run's config.json and open TensorBoard."""
        cfg = self.cfg
        self.policy = Policy(self.base, cfg.lora, cfg.lora_r, cfg.lora_alpha, reference=reference)
        self.lr = cfg.lr if cfg.lr is not None else (lr_lora if cfg.lora else lr_full)
        self.opt = make_optimizer(self.policy, self.lr, cfg.weight_decay)
        self.params = list(self.policy.named_trainable().values())
        state = load_checkpoint(self.out, self.policy, self.opt)
        if state:
            self.state, self.step = state, state["step"]
            self.history = state.get("history", [])
            self.before = state.get("eval_before")
            self.accel.print(f"resumed from step {self.step}")
            self.progress.data["history"] = list(self.history)
            self.progress.start_step = self.step
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / "tb")) if self.main else None
        (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        self.policy.train_mode(True)
        return self.policy

    def update(self) -> None:
        """One optimizer step on the gradients of every process, clipped to ``cfg.max_grad_norm``."""
        average_gradients(self.accel, self.params)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()

    def record(self, rec: dict, **progress: float | None) -> None:
        """Add a step's record to the history (kept in checkpoints) and the progress file."""
        self.history.append(rec)
        if self.main:
            self.progress.step(rec["step"], **progress)

    def checkpoint(self, total: int, extra: dict | None = None) -> None:
        """Save every ``cfg.ckpt_every`` steps and at step ``total``; all processes wait for it."""
        if self.step % self.cfg.ckpt_every == 0 or self.step == total:
            if self.main:
                save_checkpoint(self.out, self.policy, self.opt, self.step,
                                {**(extra or {}), "history": self.history, "eval_before": self.before})
            self.accel.wait_for_everyone()

    def finish(self, data_dir: str | None, card: dict, think: bool) -> Path | None:
        """Write the new bundle (main process; None elsewhere): ``cfg.name`` or ``<parent>-<method>``, in
        ``output_path``, with ``card`` (its "metrics" gain the held-out scores before / after), the run's
        metrics.json and the final progress."""
        if self.writer:
            self.writer.close()
        leave_process_group(self.accel)
        if not self.main:
            return None
        cfg, parent = self.cfg, self.parent
        assert parent is not None, "finish() before the base bundle was loaded"
        name = cfg.name or f"{parent.config.name}-{self.method}"
        path = output_path(cfg.bundle_out, data_dir, name, self.out)
        metrics = card.setdefault("metrics", {})
        write_bundle(self.policy, path, name, self.method, parent, card)
        if cfg.eval_n:
            after = heldout(load_bundle(path), cfg, think, "after")
            metrics["eval_before"], metrics["eval_after"] = self.before, after
            print_before_after(self.before, after)
            write_card(path, card)  # the card now with the held-out scores
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"{self.method.upper()} done: {self.step} steps in {time.time() - self.t_start:.0f} s; "
              f"bundle written to {path}")
        self.progress.finish("done", f"bundle written to {path}", bundle=str(path))
        return path


def export_checkpoint(run: str | Path, to: str | Path) -> Path:
    """Write a run's latest checkpoint (GRPO/DPO/KTO ``--out`` folder) as a bundle, e.g. to evaluate or try a
    run midway. The base bundle and LoRA settings are read from the run's ``config.json``."""
    run = Path(run)
    cfg = json.loads((run / "config.json").read_text())
    policy = Policy(load_base(cfg["bundle"]), cfg.get("lora", False), cfg.get("lora_r", 16), cfg.get("lora_alpha", 32),
                    reference=False)
    opt = make_optimizer(policy, 0.0)
    state = load_checkpoint(run, policy, opt)
    if state is None:
        raise SystemExit(f"no checkpoint in {run}")
    parent = parent_record(cfg["bundle"])
    method = cfg.get("method", "grpo")  # PrefConfig names its method; GRPOConfig has none
    name = f"{parent.config.name}-{method}-step{state['step']}"
    return write_bundle(policy, Path(to), name, method, parent,
                        {"data": {"run": str(run)}, "metrics": {"step": state["step"]}})


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training.tuning",
                                 description="export a fine-tuning run's latest checkpoint as a bundle")
    ap.add_argument("run", help="the run's --out folder (holds config.json and checkpoint/)")
    ap.add_argument("to", help="bundle folder to write")
    a = ap.parse_args()
    print(f"wrote {export_checkpoint(a.run, a.to)}")
