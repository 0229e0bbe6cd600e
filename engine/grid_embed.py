"""Learned 2-D position embeddings (row, column, which image) added to the LM's token embeddings.

They speed up learning of every edit kind (docs/ARCHITECTURE.md §9). The LM stays a
plain ``Emu3ForCausalLM`` called with ``inputs_embeds``; bundles without a grid embedding (real
Emu3/EARL) run the same code path with nothing added.

Position features per token (computed by ``engine.layout.grid_positions``):
- ``image``: 0 for text/structural tokens, 1 for the source image's grid, 2 for the target's;
- ``row``: grid row (0 outside images); ``col``: grid column, ``W`` for a row's EOL token.

Optionally (``centred_freqs > 0``) fixed sin/cos features of the *centred* coordinates
x = col - (W-1)/2, y = row - (H-1)/2 are added through a learned projection. Mirroring is then x -> -x,
which only flips the sign of the sin features, and a rotation swaps the row and column features: fixed
linear maps an attention head can learn once for every position, where learned tables need each
(column, mirrored column) pair matched separately (``research.grid_experiment`` measures the effect).
H and W are read off the grid itself (the EOL's column is W, the last row + 1 is H), so every call must
hold each image grid complete — as all engine calls do: whole prompts, whole generation templates
(``engine.sampler``) and whole sequences (``engine.logprobs``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "grid_embed.json"
WEIGHTS_NAME = "grid_embed.safetensors"


class GridEmbedding(nn.Module):
    def __init__(self, hidden_size: int, max_rows: int = 64, max_cols: int = 65, n_images: int = 3,
                 centred_freqs: int = 0):
        super().__init__()
        self.config = {"hidden_size": hidden_size, "max_rows": max_rows, "max_cols": max_cols, "n_images": n_images}
        if centred_freqs:  # only written when used, so older bundles' configs stay as they were
            self.config["centred_freqs"] = centred_freqs
        self.row = nn.Embedding(max_rows, hidden_size)
        self.col = nn.Embedding(max_cols, hidden_size)
        self.image = nn.Embedding(n_images, hidden_size)
        for emb in (self.row, self.col, self.image):
            nn.init.normal_(emb.weight, std=0.02)
        self.centred: nn.Linear | None = None
        if centred_freqs:
            # periods from 3 to 48 cells: the finest tells neighbours apart, the coarsest spans any grid
            periods = 3.0 * 16.0 ** (torch.arange(centred_freqs) / max(1, centred_freqs - 1))
            self.register_buffer("omega", 2 * math.pi / periods, persistent=False)
            self.centred = nn.Linear(4 * centred_freqs, hidden_size, bias=False)
            nn.init.normal_(self.centred.weight, std=0.02)

    def forward(self, image: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Long tensors of equal shape (B, T) -> (B, T, hidden); zero where ``image == 0``."""
        on = image > 0
        emb = self.image(image) + self.row(row) + self.col(col)
        if self.centred is not None:
            emb = emb + self.centred(self.centred_features(image, row, col, on))
        return emb * on.unsqueeze(-1)

    def centred_features(self, image: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                         on: torch.Tensor) -> torch.Tensor:
        """sin/cos of the centred coordinates, (B, T, 4 * centred_freqs); H, W per (sequence, image)."""
        slots = self.config["n_images"]
        w = torch.zeros(image.shape[0], slots, dtype=col.dtype, device=col.device)
        w = w.scatter_reduce(1, image, col * on, "amax")
        h = torch.zeros_like(w).scatter_reduce(1, image, row * on, "amax") + 1
        x = col.float() - (w.gather(1, image).float() - 1) / 2
        y = row.float() - (h.gather(1, image).float() - 1) / 2
        ax, ay = x.unsqueeze(-1) * self.omega, y.unsqueeze(-1) * self.omega
        return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], -1)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config, indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_NAME))

    @classmethod
    def load(cls, folder: str | Path) -> GridEmbedding | None:
        """The grid embedding saved in ``folder``, or None when the bundle has none."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).exists():
            return None
        module = cls(**json.loads((folder / CONFIG_NAME).read_text()))
        state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
        module.load_state_dict(state)
        return module
