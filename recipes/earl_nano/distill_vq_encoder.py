"""Distil an equivariant image tokenizer's encoder into a narrower one: same decoder, same codes where it can.

    python -m recipes.earl_nano.distill_vq_encoder --teacher <equivariant NanoVQ folder> --out runs/vq_student \\
        --channels 32,64,64 --crops 8000 --steps 8000           # resumes if runs/vq_student exists

Why: an equivariant ``NanoVQ`` runs its encoder over the 8 symmetries of the square and averages, so the
encoder costs 8 passes per image (``python -m benchmarks.vq_speed``), against a target of well under
0.1 s for encode + decode. The decoder runs once. A narrower encoder whose
averaged latents match the teacher's keeps the decoder, the codes and the exact equivariance.

Readable top to bottom:
1. Targets: the teacher's averaged latents of ``--crops`` random train crops, bounded by FSQ (what its
   codes round), computed once and cached in ``<out>/targets.pt``.
2. The student is the teacher's config with ``encoder_block_out_channels``; its decoder is the teacher's
   (frozen, copied), its encoder starts from scratch. It learns, from one pass, the bounded latents of
   each crop in any of the 8 poses: the teacher is exactly equivariant, so a posed crop's target is the
   moved target with its last two digits turned (checked on the first batch).
3. At inference the student averages over the 8 poses like the teacher: equivariant by construction.
Loss: MSE in FSQ's bounded space (its rounding boundaries are at half-integers). AdamW, cosine schedule.
Checkpoints every ``--ckpt-every`` steps, TensorBoard in ``<out>/tb``, tqdm progress. At the end: the
student in ``<out>/final`` (``NanoVQ.from_pretrained``) and its agreement with the teacher's codes on
the val and test photos; PSNR / SSIM: ``python -m training.train_vq --init <out>/final --eval-only val,test``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from engine.image_io import fit_to_area
from engine.vq import D4, NanoVQ, apply_d4, move_latents
from training.common import parse_config, write_atomic
from training.train_vq import CropPool, VQTrainConfig, lr_at, read_split


@dataclass
class DistillConfig:
    teacher: str = ""  # an equivariant NanoVQ folder
    out: str = "runs/vq_student"
    corpus: str = "data/corpus"
    channels: tuple[int, ...] = (32, 64, 64)
    crops: int = 6000
    crop: int = 64
    steps: int = 12000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 200
    threads: int = 2
    seed: int = 0
    ckpt_every: int = 500


def posed(x: torch.Tensor, t: torch.Tensor, k: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop batch in pose (k, flip) and its target: the latent grid moves, the last two digits turn."""
    return apply_d4(x, k, flip), move_latents(t, k, flip)


def make_targets(teacher: NanoVQ, pool: CropPool, n: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ts = [], []
    with torch.inference_mode():
        for _ in tqdm(range(math.ceil(n / batch)), desc="teacher targets", unit="batch", file=sys.stderr):
            x = pool.batch(batch)
            xs.append(((x + 1) * 127.5).round().to(torch.uint8))  # a quarter of the memory
            ts.append(teacher.fsq.bound(teacher.symmetric_latents(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    return torch.cat(xs)[:n], torch.cat(ts)[:n]


def student_from(teacher: NanoVQ, channels: tuple[int, ...]) -> NanoVQ:
    cfg = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
    cfg["encoder_block_out_channels"] = tuple(channels)
    student = NanoVQ(**cfg)
    student.decoder.load_state_dict(teacher.decoder.state_dict())
    student.decoder.requires_grad_(False)
    return student


@torch.no_grad()
def code_agreement(student: NanoVQ, teacher: NanoVQ, photos: list, area: int) -> float:
    same = total = 0
    for p in photos:
        img = fit_to_area(p, area, teacher.spatial_factor)
        a, b = student.encode([img])[0], teacher.encode([img])[0]
        same += int((a == b).sum())
        total += a.size
    return same / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DistillConfig, argv, prog="python -m recipes.earl_nano.distill_vq_encoder", description=__doc__)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.teacher:
        raise SystemExit("--teacher: the equivariant tokenizer folder to distil")
    teacher = NanoVQ.from_pretrained(cfg.teacher).eval().float()
    if not teacher.config.equivariant:
        raise SystemExit(f"{cfg.teacher} is not an equivariant tokenizer: nothing to distil the averaging of")

    # 1. targets (cached)
    tpath = out / "targets.pt"
    if tpath.exists():
        xs, ts = torch.load(tpath)
    else:
        photos = read_split(Path(cfg.corpus), "train")
        pool = CropPool(photos, VQTrainConfig().short_sides, cfg.crop, cfg.seed)
        xs, ts = make_targets(teacher, pool, cfg.crops, 64)
        torch.save((xs, ts), tpath)
    print(f"{len(xs)} crops of {cfg.crop}², targets {tuple(ts.shape[1:])}")

    # 2. the student
    student = student_from(teacher, cfg.channels)
    opt = torch.optim.AdamW(student.encoder.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    ck = out / "checkpoint.pt"
    if ck.exists():
        state = torch.load(ck, weights_only=False)
        student.encoder.load_state_dict(state["encoder"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}")
    with torch.no_grad():  # the pose rule, on the teacher itself
        x0 = xs[:4].float() / 127.5 - 1
        xg, tg = posed(x0, ts[:4], 1, True)
        tt = teacher.fsq.bound(teacher.symmetric_latents(xg).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        err = float((tt - tg).abs().max())
        if err > 1e-3:
            raise SystemExit(f"posed targets disagree with the teacher by {err}: the pose rule is wrong")
    gen = torch.Generator().manual_seed(cfg.seed + step)
    writer = SummaryWriter(str(out / "tb"))
    bar = tqdm(total=cfg.steps, initial=step, desc="distil", unit="step", file=sys.stderr, dynamic_ncols=True)
    student.train()
    losses: list[float] = []
    while step < cfg.steps:
        idx = torch.randint(len(xs), (cfg.batch_size,), generator=gen)
        k, flip = D4[int(torch.randint(8, (1,), generator=gen))]
        x, t = posed(xs[idx].float() / 127.5 - 1, ts[idx], k, flip)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)  # train_vq's warm-up + cosine: it reads lr, warmup, steps
        pred = student.fsq.bound(student._raw_latents(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        loss = F.mse_loss(pred, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        with torch.no_grad():
            agree = float((pred.round() == t.round()).all(1).float().mean())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", cells_same=f"{agree:.3f}")
        if step % 50 == 0:
            writer.add_scalar("distil/mse", loss.item(), step)
            writer.add_scalar("distil/cells_same_code", agree, step)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            state = {"encoder": student.encoder.state_dict(), "opt": opt.state_dict(), "step": step}
            write_atomic(ck, lambda tmp: torch.save(state, tmp))  # noqa: B023 - called at once
    bar.close()
    writer.close()
    if losses:
        k = max(1, min(50, len(losses) // 4))
        print(f"distil_mse first={np.mean(losses[:k]):.4f} last={np.mean(losses[-k:]):.4f} (means of {k} steps)")

    # 3. the averaged student
    student.eval()
    final = out / "final"
    student.save_pretrained(str(final))
    held = [p for split in ("val", "test") for p in read_split(Path(cfg.corpus), split)]
    agree = code_agreement(student, teacher, held, 128 * 128)
    print(f"codes equal to the teacher's on {len(held)} val + test photos: {agree * 100:.1f} %")
    print(f"distill_vq_encoder step={step} code_agreement={agree:.4f} out={final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
