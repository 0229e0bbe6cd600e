"""The SFT loop: trains, checkpoints, resumes from the checkpoint, and exports a bundle the engine runs."""

from __future__ import annotations

import numpy as np
import torch

from engine import edit_blocking
from engine.bundle import load_bundle
from engine.vq import NanoVQ
from training.train_sft import SFTConfig, digit_sum_init, train


def _tiny_setup(tmp_path):
    vq = NanoVQ(block_out_channels=(16, 32, 32), fsq_levels=(4, 4, 4), norm_num_groups=8)
    vq.save_pretrained(str(tmp_path / "vq"))
    rng = np.random.default_rng(0)
    recs = []
    for i in range(12):
        src = rng.integers(0, vq.codebook_size, (4, 4)).astype(np.uint16)
        recs.append({
            "src": src, "tgt": src[:, ::-1].copy(), "kind": "hflip",
            "instructions": ["Flip the photo horizontally.", "Mirror it."],
            "reasoning": f"Change: mirror left to right. Where: box [0,0,3,3] of the 4x4 grid. Keep: content {i}.",
            "keep_reasoning": "Nothing to change.",
        })
    (tmp_path / "cache").mkdir()
    torch.save(recs, tmp_path / "cache" / "shard_00000.pt")
    return SFTConfig(
        cache=str(tmp_path / "cache"), vq=str(tmp_path / "vq"), out=str(tmp_path / "run"), hidden=64, layers=1,
        heads=2, kv_heads=2, intermediate=128, text_vocab_size=300, batch_size=2, warmup=1, steps=3,
        ckpt_every=2, threads=1, image_area=32 * 32,
    )


def test_trains_resumes_and_exports(tmp_path, capsys):
    cfg = _tiny_setup(tmp_path)
    train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 3
    first = load_bundle(tmp_path / "run" / "checkpoint" / "bundle")

    cfg.steps = 5  # a longer schedule continues from step 3 rather than starting over
    train(cfg)
    assert "resumed from step 3" in capsys.readouterr().out
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 5
    second = load_bundle(tmp_path / "run" / "checkpoint" / "bundle")
    w1, w2 = first.lm.lm_head.weight, second.lm.lm_head.weight
    assert not torch.equal(w1, w2)  # it kept training

    train(cfg, export=str(tmp_path / "shipped"))
    shipped = load_bundle(tmp_path / "shipped")
    photo = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    from PIL import Image

    done = edit_blocking(shipped, Image.fromarray(photo), "Mirror it.", n=1, seed=0)[0]
    assert done.grid.shape == (4, 4)


def test_digit_sum_init_relates_neighbouring_codes():
    torch.manual_seed(0)
    levels = [7, 5, 5]
    weight = torch.zeros(200, 32)
    ids = torch.arange(175) + 20
    digit_sum_init(weight, ids, levels)
    e = weight[ids]
    near = torch.nn.functional.cosine_similarity(e[:-1:7], e[1::7]).mean()  # codes differing in digit 0 only
    far = torch.nn.functional.cosine_similarity(e[:80], e[80:160]).mean()
    assert near > 0.4 and near > far + 0.3
    assert torch.equal(weight[:20], torch.zeros(20, 32))  # text rows untouched
