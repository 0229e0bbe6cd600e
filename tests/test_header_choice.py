"""training.header_choice: the turn-or-keep header choice fitted on the LM head's choice rows, nothing else."""

from __future__ import annotations

import json

import numpy as np
import torch

from engine.bundle import load_bundle
from engine.layout import special_ids
from training.header_choice import main


def _records(n: int, codes: int) -> list[dict]:
    """Quarter turns (6×4 targets) and flips (4×6 targets) of three 4×6 sources: what tells them apart is
    the instruction, as for a trained model (a random tiny one's hidden states are mostly its image's)."""
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, codes, (4, 6)).astype(np.uint16) for _ in range(3)]
    recs = []
    for i in range(n):
        src = sources[i % 3]
        turn = i % 2 == 0
        recs.append({
            "src": src, "tgt": np.rot90(src, -1).copy() if turn else src[:, ::-1].copy(),
            "kind": "rotate90" if turn else "hflip",
            "instructions": ["Rotate it 90 degrees clockwise.", "Turn it a quarter turn."] if turn
            else ["Mirror it.", "Flip it left to right."],
            "reasoning": f"Change: turn it, box [0,0,3,5] of the {'6x4' if turn else '4x6'} grid.",
        })
    return recs


def test_the_choice_is_learnt_on_the_choice_rows_alone(tiny_bundle, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(_records(40, tiny_bundle.vq.codebook_size), cache / "shard_00000.pt")
    out = tmp_path / "choice"
    args = ["--bundle", str(tiny_bundle.path), "--cache", str(cache), "--out", str(out), "--steps", "150",
            "--max-records", "40", "--val-share", "0.25", "--batch", "8", "--threads", "1"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    stats = dict(kv.split("=") for kv in last.split()[1:])
    assert float(stats["val_acc"]) == 1.0 and float(stats["val_p_right"]) > 0.7, last
    assert float(stats["text_kl"]) < 0.05, last  # the reasoning text the model writes barely moves

    new = load_bundle(out)
    assert new.config.transpose and new.config.parent == f"{tiny_bundle.config.name}@{tiny_bundle.config.version}"
    rows = json.loads((out / "header_choice.json").read_text())["rows"]
    old_w, new_w = tiny_bundle.lm.lm_head.weight, new.lm.lm_head.weight.float()
    changed = (old_w.bfloat16().float() != new_w).any(1).nonzero()[:, 0].tolist()
    assert changed and set(changed) <= set(rows)  # only the rows of the tokens chosen at the header
    assert not set(rows) & set(special_ids(new.tokenizer).visual_ids.tolist())  # no image token's row
    for name, p in tiny_bundle.lm.named_parameters():
        if name != "lm_head.weight":  # the body is the one it was given
            torch.testing.assert_close(p.bfloat16().float(), dict(new.lm.named_parameters())[name].float())


def test_steps_0_measures_without_writing(tiny_bundle, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(_records(8, tiny_bundle.vq.codebook_size), cache / "shard_00000.pt")
    out = tmp_path / "choice"
    assert main(["--bundle", str(tiny_bundle.path), "--cache", str(cache), "--out", str(out), "--steps", "0",
                 "--no-think", "--threads", "1"]) == 0
    assert "before: val_acc" in capsys.readouterr().out and not out.exists()
