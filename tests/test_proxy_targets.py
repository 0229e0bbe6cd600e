"""Zoom proxy targets: the source code grid upscaled by copying cells, where ``ops.zoom`` puts them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.edits import ops
from training.edits.kinds import ZOOM_CENTRES
from training.proxy_targets import apply_zoom_copy, zoom_copy
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
    subprocess.run([sys.executable, "-m", "training.pretokenize", "--vq", str(tmp_path / "vq"), "--out", str(out),
                    "--samples", "3", "--shard-size", "3", "--kinds", "zoom", "--corpus", ""],
                   check=True, capture_output=True)
    shard = torch.load(out / "shard_00000.pt", weights_only=False)
    assert [r["kind"] for r in shard] == ["zoom"] * 3  # drawn from zoom alone, not filtered from all kinds
    assert all(r["params"]["where"] in ZOOM_CENTRES for r in shard)
    raw = torch.load(out / "raw_00000.pt", weights_only=False)
    assert [r["params"] for r in raw] == [r["params"] for r in shard]
    missing = subprocess.run([sys.executable, "-m", "training.pretokenize", "--vq", str(tmp_path / "vq"), "--out",
                              str(tmp_path / "c2"), "--samples", "3", "--corpus", str(tmp_path / "none")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "no photo corpus" in missing.stderr  # no silent fallback to test photos
