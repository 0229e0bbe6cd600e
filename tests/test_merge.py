"""Weight interpolation between a bundle and one fine-tuned from it (recipes.earl_nano.merge)."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.bundle import load_bundle
from recipes.earl_nano.merge import main, merge_bundles


def _tuned(bundle, seed=1):
    t = copy.copy(bundle)
    t.lm, t.grid_embed, t.vq = copy.deepcopy(bundle.lm), copy.deepcopy(bundle.grid_embed), copy.deepcopy(bundle.vq)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(t.lm.parameters()) + list(t.grid_embed.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return t


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_merge_moves_each_weight_alpha_of_the_way(tiny_bundle, alpha):
    tuned = _tuned(tiny_bundle)
    before = {k: v.clone() for k, v in tuned.lm.state_dict().items()}
    ge_before = {k: v.clone() for k, v in tuned.grid_embed.state_dict().items()}
    merged = merge_bundles(tiny_bundle, tuned, alpha)
    for k, v in merged.lm.state_dict().items():
        torch.testing.assert_close(v, (1 - alpha) * tiny_bundle.lm.state_dict()[k] + alpha * before[k])
    for k, v in merged.grid_embed.state_dict().items():
        torch.testing.assert_close(v, (1 - alpha) * tiny_bundle.grid_embed.state_dict()[k] + alpha * ge_before[k])


def test_merge_refuses_bundles_that_do_not_share_their_tokenizers(tiny_bundle):
    other = _tuned(tiny_bundle)
    with torch.no_grad():
        next(other.vq.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="image tokenizers"):
        merge_bundles(tiny_bundle, other, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        merge_bundles(tiny_bundle, _tuned(tiny_bundle), 1.5)


def test_merge_command_writes_a_bundle_that_loads(tiny_bundle, tmp_path):
    from engine.bundle import save_bundle

    save_bundle(tiny_bundle, tmp_path / "base", dtype=None)
    save_bundle(_tuned(tiny_bundle), tmp_path / "tuned", dtype=None)
    assert main(["--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned"), "--alpha", "0.5",
                 "--out", str(tmp_path / "merged"), "--version", "9.9"]) == 0
    merged = load_bundle(tmp_path / "merged")
    assert merged.config.version == "9.9" and "merge" in merged.config.notes
    assert merged.config.parent == f"{tiny_bundle.config.name}@{tiny_bundle.config.version}"
