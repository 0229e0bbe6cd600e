"""Proxy targets: a zoom's source code grid upscaled by copying cells, where ``ops.zoom`` puts them; a
local edit's target codes pinned to the source's outside the cells the edit drew on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from research.proxy_targets import unjittered_target
from training.data.edits import KINDS, ops
from training.data.edits.kinds import ZOOM_CENTRES
from training.targets import (
    apply_pin_local,
    apply_zoom_copy,
    changed_cells,
    fill_from_outside,
    pin_local,
    zoom_copy,
)
from training.train_sft import SFTConfig, cache_records


@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (14, 18)])
def test_zoom_copy_reads_the_cell_ops_zoom_shows(shape):
    h, w = shape
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (h * w, 3))
    cells = np.arange(h * w).reshape(h, w)
    img = colours[np.kron(cells, np.ones((8, 8), dtype=int))].astype(np.uint8)  # flat 8x8 cells
    for where, (cx, cy) in ZOOM_CENTRES.items():
        zoomed = ops.to_image(ops.zoom(ops.to_array(img), 2.0, cx, cy))
        z = np.asarray(zoomed).astype(float)
        # the source cell whose colour each target cell's centre shows
        centres = z[4::8, 4::8]
        seen = np.argmin(((centres[:, :, None, :] - colours[None, None]) ** 2).sum(-1), -1)
        copied = zoom_copy(cells, {"where": where, "factor": 2.0})
        assert copied.shape == (h, w)
        assert (seen == copied).mean() > 0.9, where  # bicubic blends a few cells at block edges


def test_zoom_copy_is_a_2x2_block_copy_of_a_quarter_of_the_grid():
    cells = np.arange(256).reshape(16, 16)
    top_left = zoom_copy(cells, {"where": "top left", "factor": 2.0})
    assert np.array_equal(top_left, np.kron(cells[:8, :8], np.ones((2, 2), dtype=int)))
    centre = zoom_copy(cells, {"where": "center"})
    assert np.array_equal(centre, np.kron(cells[4:12, 4:12], np.ones((2, 2), dtype=int)))


def test_only_zoom_records_with_params_change():
    src = np.arange(64, dtype=np.uint16).reshape(8, 8)
    recs = [
        {"kind": "zoom", "src": src, "tgt": np.zeros_like(src), "params": {"where": "bottom right", "factor": 2.0}},
        {"kind": "zoom", "src": src, "tgt": np.zeros_like(src)},  # an old cache without params: left alone
        {"kind": "hflip", "src": src, "tgt": src[:, ::-1].copy(), "params": {}},
    ]
    assert apply_zoom_copy(recs) == 1
    assert np.array_equal(recs[0]["tgt"], np.kron(src[4:, 4:], np.ones((2, 2), dtype=np.uint16)))
    assert recs[0]["tgt"].dtype == np.uint16
    assert not recs[1]["tgt"].any()
    assert np.array_equal(recs[2]["tgt"], src[:, ::-1])


def test_sft_reads_several_caches_and_swaps_zoom_targets_only_when_asked(tmp_path):
    src = np.arange(64, dtype=np.uint16).reshape(8, 8)
    base = {"instructions": ["x"], "reasoning": "", "keep_reasoning": ""}
    for name, kind in [("a", "zoom"), ("b", "grayscale")]:
        (tmp_path / name).mkdir()
        torch.save([{**base, "kind": kind, "src": src, "tgt": src + 1, "params": {"where": "top right"}}],
                   tmp_path / name / "shard_00000.pt")
    caches = f"{tmp_path / 'a'},{tmp_path / 'b'},{tmp_path / 'missing'}"
    true = cache_records(SFTConfig(cache=caches))
    assert [r["kind"] for r in true] == ["zoom", "grayscale"]
    assert np.array_equal(true[0]["tgt"], src + 1)
    copy = cache_records(SFTConfig(cache=caches, zoom_targets="copy"))
    assert np.array_equal(copy[0]["tgt"], zoom_copy(src, {"where": "top right"}))
    assert np.array_equal(copy[1]["tgt"], src + 1)
    with pytest.raises(SystemExit, match="zoom-targets"):
        cache_records(SFTConfig(cache=caches, zoom_targets="nearest"))


def test_pretokenize_draws_only_the_kinds_asked_for_and_keeps_their_params(tmp_path):
    import subprocess
    import sys

    from engine.vq import NanoVQ

    NanoVQ(block_out_channels=(16, 32, 32), fsq_levels=(4, 4, 4), norm_num_groups=8).save(tmp_path / "vq")
    out = tmp_path / "cache"
    subprocess.run([sys.executable, "-m", "training.data.pretokenize", "--vq", str(tmp_path / "vq"), "--out", str(out),
                    "--samples", "3", "--shard-size", "3", "--kinds", "zoom", "--corpus", ""],
                   check=True, capture_output=True)
    shard = torch.load(out / "shard_00000.pt", weights_only=False)
    assert [r["kind"] for r in shard] == ["zoom"] * 3  # drawn from zoom alone, not filtered from all kinds
    assert all(r["params"]["where"] in ZOOM_CENTRES for r in shard)
    raw = torch.load(out / "raw_00000.pt", weights_only=False)
    assert [r["params"] for r in raw] == [r["params"] for r in shard]
    for rec, r in zip(shard, raw, strict=True):  # a zoom changes every cell of a textured photo
        assert np.array_equal(rec["changed"], changed_cells(r["source"], r["target"], 8))
    # an older cache without "changed" gets it from its rendered samples
    for rec in shard:
        del rec["changed"]
    torch.save(shard, out / "shard_00000.pt")
    subprocess.run([sys.executable, "-m", "training.data.pretokenize", "--vq", str(tmp_path / "vq"), "--out", str(out),
                    "--mark-changed"], check=True, capture_output=True)
    marked = torch.load(out / "shard_00000.pt", weights_only=False)
    assert all(np.array_equal(m["changed"], changed_cells(r["source"], r["target"], 8))
               for m, r in zip(marked, raw, strict=True))
    missing = subprocess.run([sys.executable, "-m", "training.data.pretokenize", "--vq", str(tmp_path / "vq"), "--out",
                              str(tmp_path / "c2"), "--samples", "3", "--corpus", str(tmp_path / "none")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "no photo corpus" in missing.stderr  # no silent fallback to test photos


def test_changed_cells_are_the_cells_with_a_changed_pixel():
    src = np.random.default_rng(0).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    tgt = src.copy()
    tgt[9, 17] = 255 - tgt[9, 17]  # one pixel of cell (1, 2)
    tgt[20:24, 0:3] = 0  # part of cell (2, 0)
    tgt[0, 0, 0] ^= 1  # rounding: not a change
    ch = changed_cells(src, tgt, 8)
    assert ch.shape == (3, 4)
    assert sorted(zip(*np.nonzero(ch), strict=True)) == [(1, 2), (2, 0)]
    assert changed_cells(src, np.zeros((32, 24, 3), np.uint8), 8) is None  # a quarter turn


def test_pin_local_keeps_the_target_only_around_the_edit():
    src = np.zeros((6, 6), np.uint16)
    tgt = np.full((6, 6), 7, np.uint16)  # the tokenizer changed every code
    ch = np.zeros((6, 6), bool)
    ch[2, 2] = True
    pinned = pin_local(src, tgt, ch, grow=1)
    assert np.array_equal(pinned != 0, np.pad(np.ones((3, 3), bool), ((1, 2), (1, 2))))  # the 3x3 around it
    assert np.array_equal(pin_local(src, tgt, ch, grow=0) != 0, ch)
    recs = [
        {"kind": "add_shape", "src": src, "tgt": tgt.copy(), "changed": ch},
        {"kind": "grayscale", "src": src, "tgt": tgt.copy(), "changed": np.ones((6, 6), bool)},  # global: kept
        {"kind": "add_shape", "src": src, "tgt": tgt.copy()},  # an older cache without "changed": kept
        {"kind": "rotate90", "src": src[:, :5], "tgt": tgt[:5].copy(), "changed": None},
    ]
    assert apply_pin_local(recs) == 1
    assert np.array_equal(recs[0]["tgt"], pinned) and recs[0]["tgt"].dtype == np.uint16
    assert all((r["tgt"] == 7).all() for r in recs[1:])


def test_sft_pins_object_targets_only_when_asked(tmp_path):
    src = np.zeros((4, 4), np.uint16)
    ch = np.zeros((4, 4), bool)
    ch[0, 0] = True
    (tmp_path / "c").mkdir()
    torch.save([{"kind": "add_shape", "src": src, "tgt": src + 3, "changed": ch, "instructions": ["x"],
                 "reasoning": "", "keep_reasoning": "", "params": {}}], tmp_path / "c" / "shard_00000.pt")
    assert (cache_records(SFTConfig(cache=str(tmp_path / "c")))[0]["tgt"] == 3).all()
    pinned = cache_records(SFTConfig(cache=str(tmp_path / "c"), object_targets="pin"))[0]["tgt"]
    assert int((pinned == 3).sum()) == 4  # cell (0, 0) and its three neighbours
    with pytest.raises(SystemExit, match="object-targets"):
        cache_records(SFTConfig(cache=str(tmp_path / "c"), object_targets="copy"))


def test_fill_from_outside_copies_the_nearest_unchanged_source_cell():
    src = np.arange(36).reshape(6, 6)
    changed = np.zeros((6, 6), bool)
    changed[2:4, 1:3] = True  # a removed object's 2x2 cells
    out = fill_from_outside(src, changed)
    np.testing.assert_array_equal(out[~changed], src[~changed])  # the rest is the source
    for r, c in zip(*np.nonzero(changed), strict=True):
        d_best = min(abs(r - rr) + abs(c - cc) for rr, cc in zip(*np.nonzero(~changed), strict=True))
        rr, cc = divmod(int(np.flatnonzero(src == out[r, c])[0]), 6)
        assert not changed[rr, cc] and abs(r - rr) + abs(c - cc) == d_best  # a nearest unchanged cell
    np.testing.assert_array_equal(fill_from_outside(src, np.ones((6, 6), bool)), src)


def test_sft_fills_removals_only_when_asked(tmp_path):
    from training.train_sft import with_targets

    src = np.arange(16).reshape(4, 4)
    changed = np.zeros((4, 4), bool)
    changed[1:3, 1:3] = True
    tgt = src.copy()
    tgt[changed] = 99
    recs = [{"kind": "remove", "src": src, "tgt": tgt.copy(), "changed": changed},
            {"kind": "add_shape", "src": src, "tgt": tgt.copy(), "changed": changed}]
    with_targets(SFTConfig(), recs)
    assert (recs[0]["tgt"] == tgt).all()  # the default keeps the true targets
    with_targets(SFTConfig(remove_targets="fill"), recs)
    np.testing.assert_array_equal(recs[0]["tgt"], fill_from_outside(src, changed))
    assert (recs[1]["tgt"] == tgt).all()  # only removals
    with pytest.raises(SystemExit, match="remove-targets"):
        with_targets(SFTConfig(remove_targets="blur"), recs)


@pytest.mark.parametrize("kind", ["add_shape", "add_stamp"])
def test_unjittered_target_moves_only_the_added_object_back_to_its_named_position(kind):
    photo = Image.open("assets/examples/coffee.jpg").convert("RGB").resize((128, 128))
    res = KINDS[kind].apply(photo, np.random.default_rng(3))
    sample = {"kind": kind, "source": res.source, "target": res.target, "params": res.params}
    jitter = res.params["add"]["jitter"]
    assert max(abs(j) for j in jitter) * 128 > 1  # a visible offset to undo
    moved = np.asarray(unjittered_target(sample), dtype=np.int16)
    true = np.asarray(res.target, dtype=np.int16)
    src = np.asarray(res.source, dtype=np.int16)
    assert np.abs(moved - true).max() > 50  # the object's edges moved
    far = np.ones((128, 128), bool)  # pixels no placement within the offset range can touch stay the source's
    for t in (true, moved):
        ys, xs = np.nonzero(np.abs(t - src).sum(axis=2) > 0)
        far[max(ys.min() - 8, 0):ys.max() + 9, max(xs.min() - 8, 0):xs.max() + 9] = False
    assert far.any() and (moved[far] == src[far]).all()
    # the same sample without an offset is its own unjittered target
    still = {**sample, "params": {**res.params, "add": {**res.params["add"], "jitter": (0.0, 0.0)}}}
    still["target"] = KINDS[kind].render(res.source, still["params"]).target
    assert (np.asarray(unjittered_target(still)) == np.asarray(still["target"])).all()


def test_unjittered_target_refuses_kinds_whose_object_is_already_in_the_photo():
    photo = Image.open("assets/examples/coffee.jpg").convert("RGB").resize((128, 128))
    res = KINDS["recolour"].apply(photo, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no unsaid offset"):
        unjittered_target({"kind": "recolour", "source": res.source, "target": res.target, "params": res.params})
