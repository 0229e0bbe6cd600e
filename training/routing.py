"""Routing supervision: teach one attention head *where* each target cell's content comes from.

Geometric edits are positional copies: a flip's target cell (i, j) reads the source cell (i, W-1-j), a
2× zoom's reads the source cell under its centre. A model that has learnt flips does it with one
attention head that puts most of its attention on the moved source cell (``python -m
research.routing_probe --probe`` finds it), while another attends to the aligned cell for colour and
object edits. Where the output loss alone never leads a head to an edit's source cells (zoom, on a CPU
budget of samples), the route can be taught directly.

The position a target cell reads from is known exactly for every geometric edit, so it can be taught
directly: an extra loss, the negative log of the chosen head's attention on that source cell, from the
position whose logits predict the cell. A dense, exact signal on the one head whose job it is, instead of
the indirect one through 256 code predictions.

``route_map`` gives the map, ``RouteHead`` reads one head's attention log-probs out of a forward pass
(recomputed from the layer's input, so training keeps its fast SDPA attention), ``route_loss`` scores
them. ``train_sft --route-head 1:2 --route-weight W`` turns it on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from transformers.models.emu3.modeling_emu3 import apply_rotary_pos_emb

from training.data.edits.kinds import KINDS, ZOOM_CENTRES


def zoom_cells(h: int, w: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The source row of each target row and the source column of each target column of a zoom of an
    (h, w) code grid (``ops.zoom``'s window, in cell units; each target cell reads the cell under its centre)."""
    factor = float(params.get("factor", 2.0))
    cx, cy = ZOOM_CENTRES[params["where"]]
    x0 = min(max(cx * w - w / factor / 2, 0.0), w - w / factor)
    y0 = min(max(cy * h - h / factor / 2, 0.0), h - h / factor)
    rows = np.clip(np.floor(y0 + (np.arange(h) + 0.5) / factor).astype(int), 0, h - 1)
    cols = np.clip(np.floor(x0 + (np.arange(w) + 0.5) / factor).astype(int), 0, w - 1)
    return rows, cols


def nearest_unchanged(changed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the nearest cell outside ``changed`` for every cell (itself when unchanged)."""
    _, (rows, cols) = distance_transform_edt(changed.astype(bool), return_indices=True)
    return rows, cols


def route_map(kind: str, params: dict, src_hw: tuple[int, int], tgt_hw: tuple[int, int],
              changed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, cols), each shaped like the target grid: the source cell each target cell is read from;
    None for kinds that are not a copy, or when the shapes do not fit the kind. ``remove`` with its
    ``changed`` cells: those read the nearest unchanged cell (``proxy_targets.fill_from_outside``), the
    others are not routed (-1). ``compose``: its flips and turns chained, when it has one and no object step."""
    (hs, ws), (ht, wt) = src_hw, tgt_hw
    i, j = np.meshgrid(np.arange(ht), np.arange(wt), indexing="ij")
    same = (hs, ws) == (ht, wt)
    if kind == "remove" and same and changed is not None and changed.any() and not changed.all():
        rows, cols = nearest_unchanged(changed)
        return np.where(changed, rows, -1), np.where(changed, cols, -1)
    if kind == "hflip" and same:
        return i, ws - 1 - j
    if kind == "vflip" and same:
        return hs - 1 - i, j
    if kind == "rotate180" and same:
        return hs - 1 - i, ws - 1 - j
    if kind == "rotate90" and (ht, wt) == (ws, hs) and params.get("dir") in ("clockwise", "counterclockwise"):
        return (hs - 1 - j, i) if params["dir"] == "clockwise" else (j, ws - 1 - i)
    if kind == "zoom" and same and params.get("where") in ZOOM_CENTRES:
        rows, cols = zoom_cells(hs, ws, params)
        return rows[i], cols[j]
    if kind == "compose":
        return _compose_route(params.get("steps") or [], src_hw, tgt_hw)
    return None


def _compose_route(steps: list[dict], src_hw: tuple[int, int],
                   tgt_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """A composition's map: its geometric steps chained (colour steps keep every cell in place). None
    without a geometric step (nothing moves) or with a step that is not a copy (an added object covers
    cells that read from nowhere)."""
    hw = tuple(src_hw)
    rows, cols = np.meshgrid(np.arange(hw[0]), np.arange(hw[1]), indexing="ij")
    moved = False
    for st in steps:
        if KINDS[st["kind"]].category == "global":
            continue
        out_hw = (hw[1], hw[0]) if st["kind"] == "rotate90" else hw
        m = route_map(st["kind"], st.get("params") or {}, hw, out_hw)
        if m is None:
            return None
        rows, cols, hw, moved = rows[m], cols[m], out_hw, True
    return (rows, cols) if moved and hw == tuple(tgt_hw) else None


def route_pairs(feats: torch.Tensor, gather_pos: torch.Tensor, valid: torch.Tensor,
                routes: list[tuple[np.ndarray, np.ndarray] | None]) -> torch.Tensor:
    """(N, 3) long tensor of (item, query position, key position): for each target-image token of an item
    with a route, the position whose logits predict it and the position of the source cell it reads.

    ``feats`` (3, B, T) are a collated batch's grid features (image 1 = source, 2 = target), ``gather_pos``
    and ``valid`` (B, G) its generation's logit positions.
    """
    image, row, col = feats
    out = []
    for b, rc in enumerate(routes):
        if rc is None:
            continue
        rows, cols = rc
        ht, wt = rows.shape
        src = (image[b] == 1).nonzero().squeeze(1)
        ws = int(col[b, src].max())  # the EOL's column is W
        src = src[col[b, src] < ws]
        hs = len(src) // ws
        pos = src.reshape(hs, ws)  # sequence position of each source cell
        gen_pos = gather_pos[b][valid[b]] + 1  # the generated tokens' own positions
        tgt = gen_pos[(image[b, gen_pos] == 2) & (col[b, gen_pos] < wt)]
        if len(tgt) != ht * wt:
            raise ValueError(f"{len(tgt)} target cells for a {ht}x{wt} route")
        r_, c_ = torch.from_numpy(rows.ravel()), torch.from_numpy(cols.ravel())
        routed = r_ >= 0  # cells a route leaves out (-1) read nothing in particular
        keys = pos[r_[routed], c_[routed]]
        tgt = tgt[routed]
        out.append(torch.stack([torch.full_like(tgt, b), tgt - 1, keys], 1))
    return torch.cat(out) if out else torch.zeros(0, 3, dtype=torch.long)


def parse_head(spec: str) -> tuple[int, int] | None:
    """``"L:H"`` -> (layer, head); ``""`` -> None."""
    if not spec:
        return None
    try:
        layer, head = (int(x) for x in spec.split(":"))
    except ValueError:
        raise SystemExit(f"--route-head takes LAYER:HEAD, e.g. 1:2, got {spec!r}") from None
    return layer, head


class RouteHead:
    """Captures one attention layer's input during a forward pass, to recompute one head's attention.

    A forward pre-hook keeps the normalised hidden states and rotary embeddings the layer received; the
    scores are then those of eager attention (q·k scaled, causal), for the queried rows only.
    """

    def __init__(self, lm: Any, layer: int, head: int):
        layers = lm.model.layers
        n_heads = lm.config.num_attention_heads
        if not (0 <= layer < len(layers) and 0 <= head < n_heads):
            raise SystemExit(f"--route-head {layer}:{head}: the LM has {len(layers)} layers of {n_heads} heads")
        self.attn = layers[layer].self_attn
        self.head = head
        self.kv_head = head // (n_heads // lm.config.num_key_value_heads)  # grouped-query attention shares keys
        self.captured: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.handle = self.attn.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.captured = (hidden, kwargs["position_embeddings"])

    def remove(self) -> None:
        self.handle.remove()

    def logprobs(self, pairs: torch.Tensor) -> torch.Tensor:
        """(N,) log attention of the head on each pair's key, from its query (after a forward pass)."""
        if self.captured is None:
            raise RuntimeError("RouteHead.logprobs before a forward pass")
        hidden, (cos, sin) = self.captured
        a, d = self.attn, self.attn.head_dim
        sq, sk = slice(self.head * d, (self.head + 1) * d), slice(self.kv_head * d, (self.kv_head + 1) * d)
        q = F.linear(hidden, a.q_proj.weight[sq], None if a.q_proj.bias is None else a.q_proj.bias[sq])
        k = F.linear(hidden, a.k_proj.weight[sk], None if a.k_proj.bias is None else a.k_proj.bias[sk])
        q, k = apply_rotary_pos_emb(q.unsqueeze(1), k.unsqueeze(1), cos, sin)
        q, k = q[:, 0].float(), k[:, 0].float()
        pairs = pairs.to(q.device)
        t = torch.arange(k.shape[1], device=q.device)
        out = []
        for b in pairs[:, 0].unique():
            sel = pairs[pairs[:, 0] == b]
            scores = (q[b, sel[:, 1]] @ k[b].T) * a.scaling  # (n, T)
            scores = scores.masked_fill(t.unsqueeze(0) > sel[:, 1:2], float("-inf"))  # causal
            logp = F.log_softmax(scores, -1)
            out.append(logp.gather(1, sel[:, 2:3]).squeeze(1))
        return torch.cat(out) if out else q.new_zeros(0)


def route_loss(head: RouteHead, pairs: torch.Tensor) -> torch.Tensor:
    """Mean negative log attention on the routed source cells (0 when the batch has none)."""
    if len(pairs) == 0:
        return torch.zeros((), device=head.captured[0].device if head.captured else "cpu")
    return -head.logprobs(pairs).mean()
