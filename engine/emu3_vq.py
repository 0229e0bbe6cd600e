"""Emu3's vision tokenizer (transformers ``Emu3VQVAE``) behind the engine's ``ImageTokenizer`` protocol.

Format supported: a folder written by transformers' ``Emu3VQVAE.save_pretrained`` (config.json with
``model_type: emu3_vqgan`` + safetensors), optionally with an ``Emu3ImageProcessor``
``preprocessor_config.json`` whose ``image_mean``/``image_std``/``rescale_factor`` we honour. The
original ``BAAI/Emu3-VisionTokenizer`` repository uses its own remote-code format, which this class
does not read; ``engine.emu3_convert.assemble_emu3_bundle`` translates its config (same weight names) and
``engine.emu3_convert.extract_emu3_hf_parts`` takes the ``vqmodel`` out of an ``Emu3-*-hf`` checkpoint.

Pixels: RGB in [0, 255] -> ``x / 255`` -> ``(x - mean) / std``. Emu3's processor configs use mean = std
= 0.5 (pixels in [-1, 1]), which is the default when no processor config is present. ``decode`` returns
the VQ-VAE output in that same normalised space, undone the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import Emu3VQVAE, Emu3VQVAEConfig

from engine.vq import check_spatial_multiple, same_size_groups

PREPROCESSOR_CONFIG = "preprocessor_config.json"
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


class Emu3VisionTokenizer:
    """``Emu3VQVAE`` + Emu3 pixel normalisation, as an ``engine.vq.ImageTokenizer``."""

    def __init__(
        self,
        vqvae: Emu3VQVAE,
        image_mean: tuple[float, ...] = DEFAULT_MEAN,
        image_std: tuple[float, ...] = DEFAULT_STD,
        rescale_factor: float = 1 / 255,
    ):
        self.vqvae = vqvae.eval()
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.rescale_factor = float(rescale_factor)
        # Emu3VQVAE downsamples by 2 per stage after the first (8 for Emu3's [1, 2, 2, 4]).
        self.spatial_factor: int = int(vqvae.spatial_scale_factor)
        self.codebook_size: int = int(vqvae.config.codebook_size)

    # -- construction / persistence --------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> Emu3VisionTokenizer:
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{path} holds no Emu3VQVAE: config.json is missing")
        model_type = json.loads(cfg_file.read_text()).get("model_type")
        if model_type != Emu3VQVAEConfig.model_type:
            raise ValueError(
                f"{path} holds a {model_type!r} model, not an Emu3VQVAE ({Emu3VQVAEConfig.model_type!r}). "
                "The original BAAI/Emu3-VisionTokenizer (remote-code format) must first be converted to "
                "transformers' Emu3VQVAE and saved with save_pretrained."
            )
        vqvae = Emu3VQVAE.from_pretrained(str(path), dtype=dtype, local_files_only=True).to(device)
        kwargs = {}
        pp = path / PREPROCESSOR_CONFIG
        if pp.is_file():
            data = json.loads(pp.read_text())
            for key in ("image_mean", "image_std", "rescale_factor"):
                if data.get(key) is not None:
                    kwargs[key] = data[key]
        return cls(vqvae, **kwargs)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.vqvae.save_pretrained(str(path))
        # Written in Emu3ImageProcessor's format (the keys it reads), so transformers can load it too.
        (path / PREPROCESSOR_CONFIG).write_text(
            json.dumps(
                {
                    "image_processor_type": "Emu3ImageProcessor",
                    "do_rescale": True,
                    "rescale_factor": self.rescale_factor,
                    "do_normalize": True,
                    "image_mean": list(self.image_mean),
                    "image_std": list(self.image_std),
                    "spatial_factor": self.spatial_factor,
                },
                indent=2,
            )
        )

    @property
    def device(self) -> torch.device:
        return next(self.vqvae.parameters()).device

    def to(self, device: str | torch.device) -> Emu3VisionTokenizer:
        self.vqvae.to(device)
        return self

    # -- pixels <-> tensors ----------------------------------------------------------------------
    def _normalize(self, images: list[Image.Image]) -> torch.Tensor:
        arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) * self.rescale_factor
        arr = (arr - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        return torch.from_numpy(arr).permute(0, 3, 1, 2)

    def _unnormalize(self, x: torch.Tensor) -> list[Image.Image]:
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        x = (x.detach().float().cpu() * std + mean) / self.rescale_factor
        arr = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a) for a in arr]

    # -- ImageTokenizer protocol -----------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: list[Image.Image]) -> list[np.ndarray]:
        check_spatial_multiple(images, self.spatial_factor)
        out: dict[int, np.ndarray] = {}
        for group in same_size_groups(images):
            batch = [images[i] for i in group]
            x = self._normalize(batch).to(self.device, self.vqvae.dtype)
            sizes = torch.tensor([[im.height, im.width] for im in batch])
            tokens = self.vqvae.encode(x, image_sizes=sizes).image_tokens
            for i, t in zip(group, tokens, strict=True):
                out[i] = t.cpu().numpy().astype(np.int64)
        return [out[i] for i in range(len(images))]

    @torch.inference_mode()
    def decode(self, grids: list[np.ndarray]) -> list[Image.Image]:
        out: dict[int, Image.Image] = {}
        for group in same_size_groups(grids):
            codes = torch.as_tensor(np.stack([np.asarray(grids[i]) for i in group]), dtype=torch.long)
            if codes.ndim != 3:
                raise ValueError(f"code grids must be 2-D (H, W), got shape {tuple(codes.shape[1:])}")
            if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
                raise ValueError(f"codes must lie in [0, {self.codebook_size})")
            pixels = self.vqvae.decode(codes.to(self.device))
            for i, im in zip(group, self._unnormalize(pixels), strict=True):
                out[i] = im
        return [out[i] for i in range(len(grids))]


def tiny_emu3_vqvae_config(codebook_size: int = 64) -> Emu3VQVAEConfig:
    """A few-hundred-K-parameter Emu3VQVAE config with Emu3's 8x downsampling (for tests).

    Emu3's GroupNorms use 32 groups, so 32 channels is the smallest width that works.
    """
    return Emu3VQVAEConfig(
        codebook_size=codebook_size,
        embed_dim=4,
        latent_channels=4,
        base_channels=32,
        channel_multiplier=[1, 1, 1, 1],
        num_res_blocks=1,
        attn_resolutions=[3],
        hidden_size=32,
        num_attention_heads=1,
        temporal_downsample_factor=4,
    )
