"""The geometry analysis helpers of ``training.grid_experiment`` on hand-made code grids."""

from __future__ import annotations

import numpy as np

from training.grid_experiment import transformed_copy


def test_transformed_copy_finds_the_mirrored_source():
    rng = np.random.default_rng(0)
    recs = []
    for _ in range(8):
        src = rng.integers(0, 50, (4, 6))
        recs.append({"kind": "hflip", "src": src, "tgt": src[:, ::-1].copy()})
        recs.append({"kind": "rotate90", "src": src, "tgt": np.rot90(src, -1).copy()})
        noisy = src[::-1].copy()
        noisy[0] = (noisy[0] + 1) % 50  # one row of 4 changed: 75 % of the tokens are a copy
        recs.append({"kind": "vflip", "src": src, "tgt": noisy})
    out = transformed_copy(recs)
    assert out["hflip"][0] == 1.0 and out["rotate90"][0] == 1.0
    assert abs(out["vflip"][0] - 0.75) < 1e-9
    assert out["hflip"][2] == 8 and "rotate180" not in out
