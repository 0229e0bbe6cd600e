"""Learned 2-D position embeddings (row, column, which image) added to the LM's token embeddings.

Our CPU measurements (ARCHITECTURE §8) showed they speed up learning of every edit kind. The LM stays a
plain ``Emu3ForCausalLM`` called with ``inputs_embeds``; bundles without a grid embedding (real
Emu3/EARL) run the same code path with nothing added.

Position features per token (computed by ``engine.layout.grid_positions``):
- ``image``: 0 for text/structural tokens, 1 for the source image's grid, 2 for the target's;
- ``row``: grid row (0 outside images); ``col``: grid column, ``W`` for a row's EOL token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "grid_embed.json"
WEIGHTS_NAME = "grid_embed.safetensors"


class GridEmbedding(nn.Module):
    def __init__(self, hidden_size: int, max_rows: int = 64, max_cols: int = 65, n_images: int = 3):
        super().__init__()
        self.config = {"hidden_size": hidden_size, "max_rows": max_rows, "max_cols": max_cols, "n_images": n_images}
        self.row = nn.Embedding(max_rows, hidden_size)
        self.col = nn.Embedding(max_cols, hidden_size)
        self.image = nn.Embedding(n_images, hidden_size)
        for emb in (self.row, self.col, self.image):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, image: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Long tensors of equal shape (B, T) -> (B, T, hidden); zero where ``image == 0``."""
        on = (image > 0).unsqueeze(-1)
        emb = self.image(image) + self.row(row) + self.col(col)
        return emb * on

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
