"""Image tokenizers: the protocol the engine codes against, and EARL-nano's FSQ tokenizer.

``NanoVQ`` is a diffusers ``ModelMixin`` built from diffusers' VAE encoder/decoder blocks with a
finite-scalar quantizer (FSQ) in the middle. FSQ reconstructs better than a learned codebook of the same
size (docs/ARCHITECTURE.md §9) and cannot collapse, so it needs no codebook loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, Encoder
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from PIL import Image
from torch import nn

# The 8 symmetries of the square (dihedral group D4) as (k, flip): rotate by k quarter turns with
# ``torch.rot90(x, k, dims=(-2, -1))``, then mirror left-right if ``flip``.
D4: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))


def apply_d4(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Transform the last two (spatial) axes of ``x`` by the symmetry (k, flip)."""
    x = torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x
    return x.flip(-1) if flip else x


def invert_d4(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Undo ``apply_d4(x, k, flip)``."""
    x = x.flip(-1) if flip else x
    return torch.rot90(x, -k, dims=(-2, -1)) if k % 4 else x


def inverse_d4(k: int, flip: bool) -> tuple[int, bool]:
    """The symmetry that undoes (k, flip): mirrors are their own inverse, turns go back."""
    return (k % 4, True) if flip else (-k % 4, False)


def rotate_vector(v: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """How a 2-D vector (x along columns, y along rows; stacked on axis -1) turns with the image.

    A quarter turn of ``torch.rot90`` sends a left-to-right ramp to a bottom-to-top one:
    (x, y) -> (y, -x); a left-right mirror negates x.
    """
    x, y = v[..., 0], v[..., 1]
    for _ in range(k % 4):
        x, y = y, -x
    if flip:
        x = -x
    return torch.stack([x, y], -1)


def turn_digits(v: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The symmetry's action on FSQ digits (stacked on axis -1): the last two turn as a 2-D vector,
    the rest stay. One definition for the encoder's averaging and for ``code_permutation``."""
    return torch.cat([v[..., :-2], rotate_vector(v[..., -2:], k, flip)], -1)


def move_latents(h: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The symmetry's action on a latent map (N, D, h, w) of an equivariant tokenizer: the grid moves
    (``apply_d4``) and the digits turn (``turn_digits``). ``latents(g · image) = move_latents(latents(image), g)``."""
    return turn_digits(apply_d4(h, k, flip).movedim(1, -1), k, flip).movedim(-1, 1)


@runtime_checkable
class ImageTokenizer(Protocol):
    """What the engine needs from an image tokenizer (nano FSQ or Emu3's VQVAE)."""

    spatial_factor: int
    codebook_size: int

    def encode(self, images: list[Image.Image]) -> list[np.ndarray]:
        """RGB images whose sides are multiples of ``spatial_factor`` -> (H, W) int64 code grids."""
        ...

    def decode(self, grids: list[np.ndarray]) -> list[Image.Image]:
        """(H, W) code grids -> RGB images."""
        ...

    def save(self, path: str | Path) -> None: ...


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Same-sized RGB images -> float tensor (N, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> RGB images (rounded, not truncated)."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al., 2023): bound each dim with tanh, round to a fixed level.

    Rounding uses a straight-through gradient. Codes are mixed-radix numbers over the levels.
    """

    def __init__(self, levels: list[int]):
        super().__init__()
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("levels", lv, persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1]), dtype=torch.long), 0)
        self.register_buffer("basis", basis, persistent=False)
        self.codebook_size = int(np.prod(levels))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        half_l = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., D) -> quantized values normalized to [-1, 1], same shape."""
        bounded = self.bound(z)
        quantized = bounded + (bounded.round() - bounded).detach()
        return quantized / (self.levels // 2)

    def codes_from_quantized(self, q: torch.Tensor) -> torch.Tensor:
        half = self.levels // 2
        digits = (q * half + half).round().long()
        return (digits * self.basis).sum(-1)

    def quantized_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        digits = (codes.unsqueeze(-1) // self.basis) % self.levels.long()
        half = self.levels // 2
        return (digits.float() - half) / half


class NanoVQ(ModelMixin, ConfigMixin):
    """EARL-nano's image tokenizer: pixel-unshuffle -> diffusers Encoder -> FSQ -> Decoder -> pixel-shuffle.

    Downsampling is ``unshuffle * 2 ** (len(block_out_channels) - 1)`` (8 by default).
    """

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 1,
        fsq_levels: tuple[int, ...] = (8, 8, 8, 8),
        unshuffle: int = 2,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = False,
        equivariant: bool = False,
        encoder_block_out_channels: tuple[int, ...] | None = None,
        decoder_extra_resnets: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if equivariant and (len(fsq_levels) < 2 or fsq_levels[-1] != fsq_levels[-2]
                            or any(lv % 2 == 0 for lv in fsq_levels)):
            raise ValueError(
                "an equivariant tokenizer needs odd FSQ levels (so a sign flip maps a level to a level) and "
                f"equal levels for its last two dims (they rotate into each other); got {tuple(fsq_levels)}"
            )
        n = len(block_out_channels)
        dims = len(fsq_levels)
        io_channels = 3 * unshuffle * unshuffle
        # A narrower encoder than decoder (same depth, so the same downsampling): an equivariant
        # tokenizer runs its encoder 8 times per image, its decoder once.
        enc_channels = tuple(encoder_block_out_channels or block_out_channels)
        if len(enc_channels) != n:
            raise ValueError(f"encoder_block_out_channels needs {n} entries, like block_out_channels")
        self.encoder = Encoder(
            in_channels=io_channels,
            out_channels=dims,
            down_block_types=("DownEncoderBlock2D",) * n,
            block_out_channels=enc_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            double_z=False,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.decoder = Decoder(
            in_channels=dims,
            out_channels=io_channels,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
        )
        # Extra residual blocks at the end of each decoder up block (low resolution first). They start
        # as the identity (zero last conv), so a trained decoder gains depth without changing its output,
        # and can keep improving after it has plateaued; the encoder and so the codes stay the same.
        extra = tuple(decoder_extra_resnets or ())
        if len(extra) > n or any(k < 0 for k in extra):
            raise ValueError(f"decoder_extra_resnets needs at most {n} counts >= 0, got {extra}")
        for block, k in zip(self.decoder.up_blocks, extra, strict=False):
            ch = block.resnets[-1].out_channels
            for _ in range(k):
                r = ResnetBlock2D(in_channels=ch, out_channels=ch, temb_channels=None, eps=1e-6,
                                  groups=norm_num_groups, dropout=0.0)
                nn.init.zeros_(r.conv2.weight)
                nn.init.zeros_(r.conv2.bias)
                block.resnets.append(r)
        self.fsq = FSQ(list(fsq_levels))

    @property
    def spatial_factor(self) -> int:
        return self.config.unshuffle * 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def codebook_size(self) -> int:
        return self.fsq.codebook_size

    # -- tensor API (training) -------------------------------------------------------------------
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> quantized latents (N, D, H/f, W/f)."""
        h = self.symmetric_latents(x) if self.config.equivariant else self._raw_latents(x)
        return self.fsq(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _raw_latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(F.pixel_unshuffle(x, self.config.unshuffle))

    def symmetric_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents averaged over the 8 symmetries of the square, so that exactly

            encode(g · image) = g · ρ(g) · encode(image)   for every flip and quarter turn g,

        where g moves the code grid and ρ(g) turns the last two FSQ digits as a vector (``code_permutation``).
        Why: a plain encoder gives a mirrored 8×8 cell an unrelated code, so most of a flip's target
        tokens could not be predicted from the source tokens at all (``research.grid_experiment --transformed-copy``).
        Equivariant codes make every flip or rotation a copy from the moved position plus a fixed code
        permutation. FSQ's bound is odd for odd levels, so rounding keeps the symmetry.
        """
        n, total = x.shape[0], None
        for turn in (0, 1):  # one encoder batch per grid shape: even and odd quarter turns
            group = [(k, flip) for k, flip in D4 if k % 2 == turn]
            hs = self._raw_latents(torch.cat([apply_d4(x, k, flip) for k, flip in group]))
            for i, (k, flip) in enumerate(group):
                h = move_latents(hs[i * n : (i + 1) * n], *inverse_d4(k, flip))  # back to the photo's pose
                total = h if total is None else total + h
        return total / len(D4)

    def code_permutation(self, k: int, flip: bool) -> np.ndarray:
        """For an equivariant tokenizer: ``perm[c]`` is the code a cell with code ``c`` gets once the
        image is transformed by (k, flip) (the grid moves by ``apply_d4``; this maps the codes)."""
        if not self.config.equivariant:
            raise ValueError("only an equivariant tokenizer maps codes by a fixed permutation")
        q = self.fsq.quantized_from_codes(torch.arange(self.codebook_size))
        return self.fsq.codes_from_quantized(turn_digits(q, k, flip)).numpy()

    def decode_latents(self, q: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.decoder(q), self.config.unshuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(self.encode_latents(x))

    def codes_from_latents(self, q: torch.Tensor) -> torch.Tensor:
        return self.fsq.codes_from_quantized(q.permute(0, 2, 3, 1))

    def latents_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.fsq.quantized_from_codes(codes).permute(0, 3, 1, 2).to(self.dtype)

    # -- ImageTokenizer protocol -----------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: list[Image.Image]) -> list[np.ndarray]:
        check_spatial_multiple(images, self.spatial_factor)
        out: list[np.ndarray] = []
        for group in same_size_groups(images):
            x = pil_to_tensor([images[i] for i in group]).to(self.device, self.dtype)
            codes = self.codes_from_latents(self.encode_latents(x)).cpu().numpy()
            out.extend(zip(group, codes, strict=True))
        return [c for _, c in sorted(out, key=lambda t: t[0])]

    @torch.inference_mode()
    def decode(self, grids: list[np.ndarray]) -> list[Image.Image]:
        out = []
        for group in same_size_groups(grids):
            codes = torch.as_tensor(np.stack([grids[i] for i in group]), dtype=torch.long, device=self.device)
            out.extend(zip(group, tensor_to_pil(self.decode_latents(self.latents_from_codes(codes))), strict=True))
        return [im for _, im in sorted(out, key=lambda t: t[0])]

    def save(self, path: str | Path) -> None:
        self.save_pretrained(str(path))


def check_spatial_multiple(images: list[Image.Image], factor: int) -> None:
    for im in images:
        if im.width % factor or im.height % factor:
            raise ValueError(f"image size {im.size} is not a multiple of the spatial factor {factor}")


def same_size_groups(items: list) -> list[list[int]]:
    """Indices grouped by image size / grid shape so each group can run as one batch."""
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        key = it.size if isinstance(it, Image.Image) else tuple(np.shape(it))
        groups.setdefault(key, []).append(i)
    return list(groups.values())
