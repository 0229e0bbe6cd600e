"""Train EARL-nano's image tokenizer (NanoVQ, FSQ) on the photo corpus. Readable top to bottom.

    python -m training.train_vq --corpus data/corpus --out runs/vq          # resumes if runs/vq exists
    tensorboard --logdir runs/vq

A convolutional tokenizer can train on small crops and run at 128² area: each photo is first
downscaled to a random short side (so a 64² crop looks like part of a whole photo at 128² area), then
cropped. Everything is held in memory as uint8, so a step costs only the model.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from engine.image_io import fit_to_area
from engine.vq import NanoVQ, pil_to_tensor, tensor_to_pil
from training.common import parse_config, write_atomic


@dataclass
class VQTrainConfig:
    corpus: str = "data/corpus"
    out: str = "runs/vq"
    steps: int = 4000
    batch_size: int = 32
    crop: int = 64
    short_sides: tuple[int, ...] = (96, 112, 128, 144, 160, 192, 224, 256)
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    edge_weight: float = 0.5  # L1 on image gradients: cheap sharpness, no pretrained network needed
    threads: int = 2
    seed: int = 0
    eval_every: int = 250
    ckpt_every: int = 100
    eval_area: int = 128 * 128
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    fsq_levels: tuple[int, ...] = (7, 5, 5, 5, 5)
    # Start from a trained tokenizer folder; with decoder_only the encoder (and so every code an editing
    # model was trained on) stays frozen while the decoder keeps improving the pictures.
    init: str = ""
    decoder_only: bool = False
    # With init: extra residual blocks per decoder up block (low resolution first), starting as the
    # identity (NanoVQ.decoder_extra_resnets). More decoder capacity for a plateaued decoder, same codes.
    decoder_extra: tuple[int, ...] = ()
    # Codes that turn with the image (``NanoVQ.symmetric_latents``): flips and quarter turns of the photo
    # become a move of the code grid plus a fixed code permutation. With ``init``, a plain tokenizer's
    # weights are the starting point and the encoder learns to put orientation into the last two dims.
    equivariant: bool = False
    # Share of crops that get one of the suite's global colour edits (inverted, saturated, warmer…):
    # an editing model's outputs are such images, and a tokenizer fitted to natural photos alone
    # decodes their unusual colours worst. Useful with decoder_only: the codes stay the same.
    colour_edits: float = 0.0
    eval_only: str = ""  # comma-separated corpus splits: just print PSNR/SSIM/codes of ``init`` on them
    extra: dict = field(default_factory=dict)


def read_split(corpus: Path, split: str) -> list[Image.Image]:
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [Image.open(corpus / r["file"]).convert("RGB") for r in rows if r["split"] == split]


def resize_short(img: Image.Image, short: int) -> Image.Image:
    s = short / min(img.size)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.LANCZOS)


class CropPool:
    """All train photos pre-resized to every short side; random crops come from memory."""

    def __init__(self, photos: list[Image.Image], short_sides: tuple[int, ...], crop: int, seed: int,
                 turns: bool = False, colour_edits: float = 0.0):
        self.arrays = [np.asarray(resize_short(p, s)) for p in photos for s in short_sides if s >= crop]
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        self.turns = turns  # quarter turns too: equivariant codes describe every pose, so the decoder sees them all
        self.colour_edits = colour_edits
        if colour_edits:
            from training.data.edits import ops
            from training.data.edits.kinds import GLOBAL_KINDS

            self.colour_fns = [k.fn for k in GLOBAL_KINDS]
            # the suite's own uint8 <-> float conversions: a crop is edited exactly as a suite target is
            self.to_array, self.to_image = ops.to_array, ops.to_image

    def batch(self, n: int) -> torch.Tensor:
        out = np.empty((n, self.crop, self.crop, 3), dtype=np.uint8)
        for i in range(n):
            a = self.arrays[self.rng.integers(len(self.arrays))]
            y = self.rng.integers(a.shape[0] - self.crop + 1)
            x = self.rng.integers(a.shape[1] - self.crop + 1)
            c = a[y : y + self.crop, x : x + self.crop]
            c = c[:, ::-1] if self.rng.random() < 0.5 else c
            if self.colour_edits and self.rng.random() < self.colour_edits:
                fn = self.colour_fns[self.rng.integers(len(self.colour_fns))]
                c = np.asarray(self.to_image(fn(self.to_array(c))))
            out[i] = np.rot90(c, int(self.rng.integers(4))) if self.turns else c
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def reconstruction_loss(model: NanoVQ, x: torch.Tensor, edge_weight: float) -> tuple[torch.Tensor, dict]:
    y = model(x)
    l1, mse = F.l1_loss(y, x), F.mse_loss(y, x)
    (gx, gy), (tx, ty) = image_gradients(y), image_gradients(x)
    edge = F.l1_loss(gx, tx) + F.l1_loss(gy, ty)
    return l1 + mse + edge_weight * edge, {"l1": l1.item(), "mse": mse.item(), "edge": edge.item()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


@torch.no_grad()
def evaluate(model: NanoVQ, photos: list[Image.Image], area: int) -> dict:
    """PSNR/SSIM at the model's working resolution and codebook usage over the held-out photos."""
    model.eval()
    psnrs, ssims, codes = [], [], []
    for p in photos:
        img = fit_to_area(p, area, model.spatial_factor)  # exactly what the engine feeds the tokenizer
        grid = model.encode([img])[0]
        rec = model.decode([grid])[0]
        a, b = np.asarray(img), np.asarray(rec)
        psnrs.append(psnr(a, b))
        ssims.append(structural_similarity(a, b, channel_axis=2, data_range=255))
        codes.append(grid.ravel())
    model.train()
    allc = np.concatenate(codes)
    counts = np.bincount(allc, minlength=model.codebook_size).astype(np.float64)
    prob = counts[counts > 0] / counts.sum()
    return {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "codes_used": int((counts > 0).sum()),
        "perplexity": float(np.exp(-(prob * np.log(prob)).sum())),
        "n": len(photos),
    }


def lr_at(step: int, cfg: VQTrainConfig) -> float:
    """Linear warm-up, then cosine to 0 (any config with ``lr``, ``warmup`` and ``steps``)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def grow_decoder(model: NanoVQ, extra: tuple[int, ...]) -> NanoVQ:
    """A copy of ``model`` with ``extra`` more residual blocks per decoder up block; same outputs."""
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    old = tuple(config.get("decoder_extra_resnets") or ())
    total = tuple(a + b for a, b in zip_longest(old, extra, fillvalue=0))
    grown = NanoVQ(**{**config, "decoder_extra_resnets": total})
    # load_state_dict matches blocks by position: the old extras keep their weights, the new ones
    # (appended after them) stay the identity
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or not all(".resnets." in k for k in missing):
        raise RuntimeError(f"growing the decoder did not keep the weights: {unexpected or missing}")
    return grown.to(model.device, model.dtype)


def train(cfg: VQTrainConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(cfg.corpus)
    if cfg.eval_only:
        photos = [p for split in cfg.eval_only.split(",") for p in read_split(corpus, split)]
        metrics = evaluate(NanoVQ.from_pretrained(cfg.init).eval(), photos, cfg.eval_area)
        print("vq " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        return metrics
    train_photos, test_photos = read_split(corpus, "train"), read_split(corpus, "test")
    if not train_photos:
        raise SystemExit(f"no train photos in {corpus}/manifest.jsonl; build it: python -m training.data.corpus build")
    pool = CropPool(train_photos, cfg.short_sides, cfg.crop, cfg.seed, turns=cfg.equivariant,
                    colour_edits=cfg.colour_edits)

    if cfg.init:
        model = NanoVQ.from_pretrained(cfg.init, **({"equivariant": True} if cfg.equivariant else {}))
        if cfg.decoder_extra:
            model = grow_decoder(model, cfg.decoder_extra)
    else:
        model = NanoVQ(
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            fsq_levels=cfg.fsq_levels,
            equivariant=cfg.equivariant,
        )
    trainable = model.parameters()
    if cfg.decoder_only:
        model.encoder.requires_grad_(False)
        trainable = model.decoder.parameters()
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    step = 0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():  # resume exactly: weights, optimizer moments, step and the crop sampler's RNG
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        pool.rng.bit_generator.state = state["pool_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from step {step}")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    writer = SummaryWriter(str(out / "tb"))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"NanoVQ {n_params / 1e6:.2f}M params, {model.codebook_size} codes, {len(train_photos)} train photos"
          + (", equivariant" if model.config.equivariant else ""))

    def save_checkpoint() -> None:
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                 "pool_rng": pool.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        write_atomic(ckpt_path, lambda tmp: torch.save(state, tmp))

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="vq", dynamic_ncols=True)
    t0 = time.time()
    metrics: dict = {}
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss, parts = reconstruction_loss(model, pool.batch(cfg.batch_size), cfg.edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 10 == 0:
            writer.add_scalar("train/loss", loss.item(), step)
            for k, v in parts.items():
                writer.add_scalar(f"train/{k}", v, step)
            writer.add_scalar("train/lr", lr_at(step, cfg), step)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_checkpoint()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            metrics = evaluate(model, test_photos, cfg.eval_area)
            for k, v in metrics.items():
                writer.add_scalar(f"test/{k}", v, step)
            sample = fit_to_area(test_photos[0], cfg.eval_area, model.spatial_factor)
            rec = tensor_to_pil(model(pil_to_tensor([sample])))[0]
            both = np.concatenate([np.asarray(sample), np.asarray(rec)], axis=1)
            writer.add_image("test/reconstruction", both, step, dataformats="HWC")
            tqdm.write(f"step {step} {json.dumps(metrics)} ({time.time() - t0:.0f}s this run)")
    bar.close()
    final = out / "final"
    model.save_pretrained(str(final))
    metrics = metrics or evaluate(model, test_photos, cfg.eval_area)
    metrics["steps"] = step
    (final / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print("vq " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return metrics


def main(argv: list[str] | None = None) -> None:
    train(parse_config(VQTrainConfig, argv, prog="python -m training.train_vq", description=__doc__))


if __name__ == "__main__":
    main()
