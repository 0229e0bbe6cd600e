"""Routing supervision: the source cell each target cell of a geometric edit reads from, the positions it
gives a batch, one head's attention recomputed outside the forward pass, and training that head."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from engine.constraint import FreeFormConstraint
from engine.layout import build_prompt, build_target
from engine.logprobs import collate, embed_inputs
from training.data.edits import KINDS
from training.routing import RouteHead, parse_head, route_loss, route_map, route_pairs
from training.targets import zoom_copy

PARAMS = [("hflip", {}), ("vflip", {}), ("rotate180", {}), ("rotate90", {"dir": "clockwise"}),
          ("rotate90", {"dir": "counterclockwise"})] + [
    ("zoom", {"where": w, "factor": 2.0}) for w in ("center", "top left", "bottom right")]


def _cell_photo(h: int, w: int, seed: int) -> tuple[Image.Image, np.ndarray]:
    """A photo of (h, w) flat 8x8 cells, each its own random colour, and those colours (cell index order)."""
    colours = np.random.default_rng(seed).integers(0, 256, (h * w, 3))
    cells = np.arange(h * w).reshape(h, w)
    return Image.fromarray(colours[np.kron(cells, np.ones((8, 8), dtype=int))].astype(np.uint8)), colours


def _cells_seen(out: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Which source cell's colour each 8x8 cell of ``out`` shows (at its centre)."""
    return np.argmin(((out[4::8, 4::8][:, :, None, :] - colours[None, None]) ** 2).sum(-1), -1)


@pytest.mark.parametrize("kind,params", PARAMS)
def test_route_map_reads_the_cell_the_real_edit_moves_there(kind, params):
    h, w = 6, 10  # non-square: a quarter turn's target grid is 10×6
    photo, colours = _cell_photo(h, w, 0)
    cells = np.arange(h * w).reshape(h, w)
    seen = _cells_seen(np.asarray(KINDS[kind].render(photo, params).target).astype(float), colours)
    rows, cols = route_map(kind, params, (h, w), seen.shape)
    assert rows.shape == seen.shape == ((w, h) if kind == "rotate90" else (h, w))
    assert (cells[rows, cols] == seen).mean() > 0.9  # the zoom's bicubic blends a few cells at block edges
    if kind == "zoom":
        assert np.array_equal(cells[rows, cols], zoom_copy(cells, params))  # the copy targets read the same


@pytest.mark.parametrize("steps", [["invert", "rotate180"], ["vflip", "invert"],
                                   ["hflip", "rotate90"], ["rotate90", "vflip"]])
def test_route_map_of_a_composition_chains_its_geometric_steps(steps):
    h, w = 6, 6
    photo, colours = _cell_photo(h, w, 1)
    cells = np.arange(h * w).reshape(h, w)
    params = {"steps": [{"kind": k, "params": {"dir": "clockwise"} if k == "rotate90" else {}} for k in steps]}
    out = np.asarray(KINDS["compose"].render(photo, params).target).astype(float)
    if "invert" in steps:
        out = 255 - out  # a colour step that keeps the cells apart
    seen = _cells_seen(out, colours)
    rows, cols = route_map("compose", params, (h, w), seen.shape)
    assert (cells[rows, cols] == seen).mean() > 0.9


def test_route_map_of_a_composition_needs_a_move_and_no_object():
    flip = {"kind": "hflip", "params": {}}
    grey = {"kind": "grayscale", "params": {}}
    star = {"kind": "add_shape", "params": {}}
    assert route_map("compose", {"steps": [grey, flip]}, (4, 6), (4, 6)) is not None
    assert route_map("compose", {"steps": [grey]}, (4, 6), (4, 6)) is None  # nothing moves
    assert route_map("compose", {"steps": [star, flip]}, (4, 6), (4, 6)) is None  # the object reads from nowhere
    assert route_map("compose", {"steps": [flip]}, (4, 6), (6, 4)) is None  # shape does not fit


def test_route_map_refuses_what_is_not_a_geometric_copy():
    assert route_map("grayscale", {}, (4, 4), (4, 4)) is None
    assert route_map("rotate90", {"dir": "clockwise"}, (4, 6), (4, 6)) is None  # a quarter turn swaps the sides
    assert route_map("zoom", {}, (4, 4), (4, 4)) is None  # an old cache's zoom without its window
    assert parse_head("1:2") == (1, 2) and parse_head("") is None
    with pytest.raises(SystemExit, match="LAYER:HEAD"):
        parse_head("layer1")


def _batch(bundle, items, think=False):
    tok = bundle.tokenizer
    h, w = items[0][1].shape
    con = FreeFormConstraint(tok, h, w, think, vocab_size=bundle.lm.config.vocab_size)
    prompts = [build_prompt(tok, s, ins, think) for s, _, ins, _ in items]
    gens = [build_target(tok, t, "Mirror it left to right." if think else None) for _, t, _, _ in items]
    return collate(tok, con, prompts, gens)


def _hflip_items(n_items=2, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n_items):
        src = rng.integers(0, 64, (8, 8)).astype(np.uint16)
        items.append((src, src[:, ::-1].copy(), "Mirror the image.", None))
    return items


@pytest.mark.parametrize("think", [False, True])
def test_route_pairs_query_the_position_before_each_target_cell_and_key_its_source_cell(tiny_bundle, think):
    items = _hflip_items()
    batch = _batch(tiny_bundle, items, think)
    routes = [route_map("hflip", {}, (8, 8), (8, 8)), None]  # the second item is not routed
    pairs = route_pairs(batch.feats, batch.gather_pos, batch.valid, routes)
    assert len(pairs) == 64 and (pairs[:, 0] == 0).all()
    image, row, col = batch.feats[:, 0]
    tgt = pairs[:, 1] + 1
    assert (image[tgt] == 2).all() and (image[pairs[:, 2]] == 1).all()
    assert torch.equal(row[pairs[:, 2]], row[tgt]) and torch.equal(col[pairs[:, 2]], 7 - col[tgt])
    # the routed source token is the code the target cell holds (an hflip copies)
    assert torch.equal(batch.ids[0, pairs[:, 2]], batch.ids[0, tgt])


@pytest.mark.parametrize("direction", ["clockwise", "counterclockwise"])
def test_route_pairs_of_a_quarter_turn_of_a_non_square_grid(tiny_bundle, direction):
    """A 4×6 source turned into a 6×4 target, replayed under the branching constraint (the "6*4" header):
    every target cell's key is the source cell holding its code."""
    tok = tiny_bundle.tokenizer
    src = np.random.default_rng(3).permutation(64)[:24].reshape(4, 6)  # distinct codes: each cell findable
    tgt = np.rot90(src, -1 if direction == "clockwise" else 1).copy()
    con = FreeFormConstraint(tok, 4, 6, False, vocab_size=tiny_bundle.lm.config.vocab_size, transpose=True)
    batch = collate(tok, con, [build_prompt(tok, src, "Rotate it.", False)], [build_target(tok, tgt, None)])
    route = route_map("rotate90", {"dir": direction}, (4, 6), tgt.shape)
    assert route[0].shape == (6, 4) and (src[route] == tgt).all()
    pairs = route_pairs(batch.feats, batch.gather_pos, batch.valid, [route])
    assert len(pairs) == 24
    assert torch.equal(batch.ids[0, pairs[:, 2]], batch.ids[0, pairs[:, 1] + 1])  # the key holds the cell's code


def test_route_head_matches_the_models_own_attention(tiny_bundle):
    bundle = copy.copy(tiny_bundle)
    bundle.lm = copy.deepcopy(tiny_bundle.lm).eval()
    bundle.lm.set_attn_implementation("eager")
    batch = _batch(bundle, _hflip_items())
    pairs = route_pairs(batch.feats, batch.gather_pos, batch.valid, [route_map("hflip", {}, (8, 8), (8, 8))] * 2)
    n_layers, n_heads = len(bundle.lm.model.layers), bundle.lm.config.num_attention_heads
    heads = {(la, h): RouteHead(bundle.lm, la, h) for la in range(n_layers) for h in range(n_heads)}
    with torch.no_grad():
        out = bundle.lm.model(inputs_embeds=embed_inputs(bundle, batch.ids, tuple(batch.feats)),
                              attention_mask=batch.attn, output_attentions=True, use_cache=False)
    for (la, h), head in heads.items():
        want = out.attentions[la][pairs[:, 0], h, pairs[:, 1], pairs[:, 2]]
        got = head.logprobs(pairs).exp()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        head.remove()
    with pytest.raises(SystemExit, match="layers of"):
        RouteHead(bundle.lm, n_layers, 0)


def test_route_loss_teaches_the_head_where_a_zoom_reads_from(tiny_bundle):
    bundle = copy.copy(tiny_bundle)
    bundle.lm = copy.deepcopy(tiny_bundle.lm).train()
    bundle.grid_embed = copy.deepcopy(tiny_bundle.grid_embed)
    rng = np.random.default_rng(1)
    items, routes = [], []
    for where in ("top left", "bottom right", "center", "top right"):
        src = rng.integers(0, 64, (8, 8)).astype(np.uint16)
        params = {"where": where, "factor": 2.0}
        items.append((src, zoom_copy(src, params), f"Crop to the {where} and scale it up 2x.", None))
        routes.append(route_map("zoom", params, (8, 8), (8, 8)))
    batch = _batch(bundle, items)
    pairs = route_pairs(batch.feats, batch.gather_pos, batch.valid, routes)
    head = RouteHead(bundle.lm, 1, 0)
    params = list(bundle.lm.parameters()) + list(bundle.grid_embed.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(40):
        bundle.lm.model(inputs_embeds=embed_inputs(bundle, batch.ids, tuple(batch.feats)), attention_mask=batch.attn)
        loss = route_loss(head, pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.remove()
    # from spread attention (about log of the ~100 positions before the target) to mostly on the source cell
    assert losses[0] > 3.0 and losses[-1] < 0.5 * losses[0]


def test_probe_reports_every_heads_attention_per_kind(tiny_bundle):
    from research.routing_probe import probe

    rng = np.random.default_rng(2)
    recs = []
    for kind, params in (("hflip", {}), ("zoom", {"where": "center", "factor": 2.0}), ("grayscale", {})):
        src = rng.integers(0, 64, (8, 8)).astype(np.uint16)
        tgt = zoom_copy(src, params) if kind == "zoom" else src[:, ::-1].copy() if kind == "hflip" else src
        recs.append({"src": src, "tgt": tgt, "kind": kind, "params": params, "instructions": ["Do it."]})
    res = probe(tiny_bundle, recs, per_kind=1)
    assert set(res) == {"hflip", "zoom", "aligned"}
    shape = (len(tiny_bundle.lm.model.layers), tiny_bundle.lm.config.num_attention_heads)
    for table in res.values():
        assert table.shape == shape and (table >= 0).all() and (table <= 1).all()


def test_a_removal_routes_only_the_cells_it_hid_to_the_nearest_unchanged_cell(tiny_bundle):
    changed = np.zeros((8, 8), bool)
    changed[2:5, 3:6] = True  # the removed object's cells
    rows, cols = route_map("remove", {}, (8, 8), (8, 8), changed)
    assert (rows[~changed] == -1).all() and (cols[~changed] == -1).all()
    hit = np.stack([rows[changed], cols[changed]], 1)
    assert not changed[hit[:, 0], hit[:, 1]].any()  # every routed cell reads an unchanged one
    for (r, c), (rr, cc) in zip(np.argwhere(changed), hit, strict=True):
        nearest = min(np.hypot(r - a, c - b) for a, b in np.argwhere(~changed))
        assert np.hypot(r - rr, c - cc) == pytest.approx(nearest)
    assert route_map("remove", {}, (8, 8), (8, 8)) is None  # a record without its changed cells
    # the pairs: one per hidden cell, keyed at its source cell, which holds the code the fill copies
    rng = np.random.default_rng(1)
    src = rng.integers(0, 64, (8, 8)).astype(np.uint16)
    from training.targets import fill_from_outside

    tgt = fill_from_outside(src, changed).astype(np.uint16)
    batch = _batch(tiny_bundle, [(src, tgt, "Remove the red ball.", None)])
    pairs = route_pairs(batch.feats, batch.gather_pos, batch.valid, [(rows, cols)])
    assert len(pairs) == int(changed.sum())
    assert torch.equal(batch.ids[0, pairs[:, 2]], batch.ids[0, pairs[:, 1] + 1])
