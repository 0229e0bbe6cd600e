"""Moving an LM onto another image tokenizer (recipes.earl_nano.remap_lm): rows follow the codes' co-occurrence."""

from __future__ import annotations

import numpy as np
import torch

from engine import edit_blocking
from engine.bundle import load_bundle, save_bundle
from engine.layout import special_ids
from engine.tiny import make_tiny_random_bundle
from engine.vq import NanoVQ
from recipes.earl_nano.remap_lm import cooccurrence, remap_bundle, remap_rows


def test_a_relabelling_moves_rows_exactly():
    k = 6
    weight = torch.randn(10, 4)
    vis = torch.arange(3, 3 + k)  # token ids of codes 0..5
    perm = np.array([2, 0, 5, 1, 3, 4])  # new code c is old code perm[c]
    counts = np.zeros((k, k), dtype=np.int64)
    counts[np.arange(k), perm] = 7
    out, unseen = remap_rows(weight, vis, counts)
    assert unseen == 0
    assert torch.equal(out[vis], weight[vis][perm])
    assert torch.equal(out[:3], weight[:3]) and torch.equal(out[9:], weight[9:])  # text rows untouched


def test_mixed_and_unseen_codes_get_weighted_means():
    weight = torch.randn(3, 2)
    vis = torch.arange(3)
    counts = np.array([[3, 1, 0], [0, 0, 0], [0, 2, 2]])
    out, unseen = remap_rows(weight, vis, counts)
    assert unseen == 1
    torch.testing.assert_close(out[0], 0.75 * weight[0] + 0.25 * weight[1])
    marginal = torch.tensor([3.0, 3.0, 2.0]) / 8
    torch.testing.assert_close(out[1], marginal @ weight)  # never seen: the mean over all cells
    torch.testing.assert_close(out[2], 0.5 * weight[1] + 0.5 * weight[2])


def test_remapping_onto_the_same_tokenizer_keeps_the_model():
    bundle = make_tiny_random_bundle(seed=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(6)]
    k = bundle.config.codebook_size
    counts = cooccurrence(bundle.vq, bundle.vq, images, k)
    assert counts.sum() == 6 * 4 * 6 and np.count_nonzero(counts - np.diag(np.diag(counts))) == 0
    vis = special_ids(bundle.tokenizer).visual_ids
    seen = torch.from_numpy(counts.sum(1) > 0)
    before = bundle.lm.get_input_embeddings().weight.detach().clone()
    stats = remap_bundle(bundle, bundle.vq, counts)
    assert stats["top_share"] == 1.0 and stats["unseen_codes"] == int((~seen).sum())
    after = bundle.lm.get_input_embeddings().weight
    torch.testing.assert_close(after[vis[seen]], before[vis[seen]])
    assert bundle.config.version.endswith("-remapped") and bundle.config.notes["remap_cells"] == 144


def test_remapped_bundle_saves_loads_and_edits(tmp_path):
    bundle = make_tiny_random_bundle(seed=4)
    new = NanoVQ(block_out_channels=(16, 32, 32), fsq_levels=(4, 4, 4), norm_num_groups=8).eval()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    counts = cooccurrence(bundle.vq, new, images, bundle.config.codebook_size)
    remap_bundle(bundle, new, counts)
    save_bundle(bundle, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert loaded.config.version.endswith("-remapped")
    from PIL import Image

    done = edit_blocking(loaded, Image.fromarray(images[0]), "make it black and white", seed=0, n=1)
    assert len(done) == 1 and done[0].image.size == (64, 64)
