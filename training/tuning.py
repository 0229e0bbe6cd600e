"""What the fine-tuning loops (GRPO, DPO, KTO) share: the trainable policy (LoRA or full), its frozen
reference, gradient averaging across processes, resumable checkpoints and the output bundle + card.

- LoRA (peft) on Emu3's attention and MLP projections; the reference is the same model with the adapter
  disabled (no second copy in memory). Full fine-tuning trains the LM and the grid embedding; the
  reference is a frozen copy.
- Several processes (``accelerate launch``): every process samples/loads its own data and the gradients
  are averaged with one all-reduce per parameter before the optimizer step. We do not wrap the LM in
  DDP because ``engine.logprobs.sequence_logprobs`` calls the decoder directly (not ``forward``), which
  DDP's reducer would not see.
- Checkpoints: ``<out>/checkpoint/{trainable.safetensors, state.pt}`` (fp32 trainable tensors, optimizer,
  step, RNG states, loop counters), written to a temp folder and renamed, so a kill at any moment leaves
  the previous or the new checkpoint complete. Resuming reloads the base bundle, rebuilds the same
  LoRA/full setup and loads the tensors: the run continues exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.bundle import Bundle, load_bundle, save_bundle
from engine.diskspace import free_bytes, is_no_space, no_space_error

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Policy:
    """The bundle being trained plus a way to run its frozen reference."""

    def __init__(self, bundle: Bundle, lora: bool, lora_r: int = 16, lora_alpha: int = 32) -> None:
        self.lora = lora
        self.bundle = bundle
        bundle.lm.requires_grad_(False)
        if bundle.grid_embed is not None:
            bundle.grid_embed.requires_grad_(False)
        if lora:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                             bias="none")
            bundle.lm = get_peft_model(bundle.lm, cfg)
            self.ref_bundle = None
        else:
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
    """Every process leaves the process group together once the loop is done. A rank that exited while the
    group was still up sometimes aborted in gloo's teardown ("terminate called without an active
    exception", seen once in CI); afterwards the main process writes the bundle alone."""
    accel.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def save_checkpoint(out: Path, policy: Policy, opt: torch.optim.Optimizer, step: int, extra: dict) -> None:
    """Write the trainable weights and optimizer state to ``out/checkpoint`` (via ``checkpoint.tmp`` and a
    rename). Out of disk space: ``NoSpaceError`` naming the folder and the space needed; the partial
    ``checkpoint.tmp`` is removed and the previous checkpoint is left as it was."""
    ckpt, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in policy.named_trainable().items()}
    try:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save({"opt": opt.state_dict(), "step": step, "torch_rng": torch.get_rng_state(), **extra},
                   tmp / "state.pt")
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # torch.save reports a full disk as a RuntimeError ("file write failed"): judge by the free space too
        need = sum(t.numel() * 4 for t in tensors.values()) * 3 + (1 << 20)  # weights + Adam's two moments
        free = free_bytes(out)
        if is_no_space(e) or (free is not None and free < need):
            prev = ckpt if (ckpt / "state.pt").exists() else None
            kept = (f"The previous checkpoint in {prev} is kept; resume the job once space is freed."
                    if prev else "There is no earlier checkpoint.")
            raise no_space_error(out, need, f"the checkpoint of step {step}", kept) from e
        raise
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)  # the atomic switch: before it the old checkpoint is complete, after it the new one
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint(out: Path, policy: Policy, opt: torch.optim.Optimizer) -> dict | None:
    """Restore the latest checkpoint into ``policy``/``opt``; its state dict, or None when there is none."""
    ckpt = out / "checkpoint"
    if not (ckpt / "state.pt").exists():
        old = out / "checkpoint.old"  # killed between the two renames of save_checkpoint
        if not (old / "state.pt").exists():
            return None
        ckpt = old
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


def load_base(path: str | Path, device: Any = "cpu") -> Bundle:
    """The starting bundle in float32 (optimizer updates of bf16 weights would round away)."""
    return load_bundle(path, device=device, dtype=torch.float32)


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
    save_bundle(b, path, dtype=dtype)
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


def export_checkpoint(run: str | Path, to: str | Path) -> Path:
    """Write a run's latest checkpoint (GRPO/DPO/KTO ``--out`` folder) as a bundle, e.g. to evaluate or try a
    run midway. The base bundle and LoRA settings are read from the run's ``config.json``."""
    run = Path(run)
    cfg = json.loads((run / "config.json").read_text())
    parent = load_base(cfg["bundle"])
    policy = Policy(load_base(cfg["bundle"]), cfg.get("lora", False), cfg.get("lora_r", 16), cfg.get("lora_alpha", 32))
    opt = make_optimizer(policy, 0.0)
    state = load_checkpoint(run, policy, opt)
    if state is None:
        raise SystemExit(f"no checkpoint in {run}")
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
