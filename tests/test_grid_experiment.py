"""The geometry analysis helpers of ``research.grid_experiment`` on hand-made code grids."""

from __future__ import annotations

import numpy as np
import torch

from research.grid_experiment import transformed_copy
from training.data.pretokenize import encode_arrays


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


def test_an_equivariant_tokenizer_makes_every_geometry_edit_a_permuted_copy():
    from tests.test_vq import photo_like, tiny_equivariant_vq

    vq = tiny_equivariant_vq()
    ops = {"hflip": lambda a: a[:, ::-1], "vflip": lambda a: a[::-1], "rotate180": lambda a: a[::-1, ::-1],
           "rotate90": lambda a: np.rot90(a, -1)}
    recs = []
    for i in range(4):
        src = np.asarray(photo_like(24, 32, seed=i))
        s_codes = encode_arrays(vq, [src])[0]
        for kind, op in ops.items():
            t_codes = encode_arrays(vq, [np.ascontiguousarray(op(src))])[0]
            recs.append({"kind": kind, "src": s_codes, "tgt": t_codes})
    permuted = transformed_copy(recs, vq)
    plain = transformed_copy(recs)  # moving the grid alone, as for a plain tokenizer
    for kind in ops:
        assert permuted[kind][0] == 1.0, kind
    assert min(plain[k][0] for k in ops) < 0.9


def test_an_arm_trains_and_logs_heldout_accuracy(tmp_path):
    import argparse
    import json

    from research.grid_experiment import run
    from tests.test_train_sft import _tiny_setup

    cfg = _tiny_setup(tmp_path)  # 12 cached 4×4 hflip records and a tiny VQ
    a = argparse.Namespace(arm="learned", out=str(tmp_path / "arm"), cache=cfg.cache, vq=cfg.vq, corpus=None,
                           kinds="hflip", centred_freqs=8, steps=2, lr=1e-3, warmup=1, eval_every=1, heldout=1,
                           seed=0, threads=1)
    threads = torch.get_num_threads()
    try:
        run(a)
    finally:
        torch.set_num_threads(threads)  # run() sets the process-wide count; later tests expect the default
    log = json.loads((tmp_path / "arm" / "log.json").read_text())["log"]
    assert [r["step"] for r in log] == [1, 2]
    assert 0.0 <= log[-1]["heldout"]["hflip"]["acc"] <= 1.0 and log[-1]["heldout"]["hflip"]["nll"] > 0


def test_continuation_scores_only_the_rows_the_model_writes():
    from engine.layout import special_ids
    from engine.tiny import make_tiny_random_bundle
    from research.grid_experiment import continuation

    bundle = make_tiny_random_bundle(seed=4, grid_embed=True)
    sp = special_ids(bundle.tokenizer)
    # a model whose logits are all equal writes, greedily, the visual token with the lowest id everywhere
    with torch.no_grad():
        bundle.lm.lm_head.weight.zero_()
    only = int(sp.code_of[int(sp.visual_ids.min())])
    src = np.random.default_rng(0).integers(0, 64, (4, 5))
    src[:, :2] = only
    tgt = src[:, ::-1].copy()
    recs = [{"kind": "hflip", "src": src, "tgt": tgt, "instructions": ["Mirror it."]}]
    table = continuation(bundle, recs, rows=[0, 2, 4], temperature=0.0)
    assert set(table["hflip"]) == {0, 2}  # K=4 leaves no row to write on a 4-row grid
    assert table["hflip"][2] == float((tgt[2:] == only).mean())  # scored on rows 2-3 only
    assert table["hflip"][0] == float((tgt == only).mean())
