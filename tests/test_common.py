"""training.common: every trainer's config as flags (one boolean style, parsed back exactly), atomic
checkpoint writes, and the progress file."""

from __future__ import annotations

import dataclasses
import json

import pytest

from recipes.earl_nano.distill_vq_encoder import DistillConfig
from training.common import Progress, config_argv, latest, parse_config, read_progress, write_atomic
from training.grpo import GRPOConfig
from training.preference import PrefConfig
from training.reward_model import RewardModelConfig
from training.train_sft import SFTConfig
from training.train_vq import VQTrainConfig

CONFIGS = [SFTConfig, GRPOConfig, PrefConfig, VQTrainConfig, DistillConfig, RewardModelConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_and_changed_values_round_trip(cls):
    assert parse_config(cls, []) == cls()
    changed = {}
    for f in dataclasses.fields(cls):
        v = getattr(cls(), f.name)
        if isinstance(v, bool):
            changed[f.name] = not v
        elif isinstance(v, int):
            changed[f.name] = v + 3
        elif isinstance(v, float):
            changed[f.name] = v + 0.25
        elif isinstance(v, str):
            changed[f.name] = v + "x"
        elif isinstance(v, tuple):
            changed[f.name] = (*v, 7)
    argv = config_argv(cls, changed)
    assert parse_config(cls, argv) == dataclasses.replace(cls(), **changed)


def test_one_boolean_style_and_the_written_spellings():
    assert parse_config(SFTConfig, ["--fresh-lm"]).fresh_lm is True
    assert parse_config(SFTConfig, ["--fresh-lm", "true"]).fresh_lm is True  # as recipes write it
    assert parse_config(SFTConfig, ["--fresh-lm", "--hidden", "384"]).hidden == 384
    assert parse_config(PrefConfig, ["--use-stars", "false"]).use_stars is False
    assert parse_config(PrefConfig, ["--no-use-stars"]).use_stars is False
    assert parse_config(GRPOConfig, ["--lora", "True"]).lora is True  # how jobs used to pass it
    assert parse_config(RewardModelConfig, ["--no-stars"]).stars is False
    assert parse_config(VQTrainConfig, ["--decoder-only", "--equivariant"]).equivariant is True
    assert config_argv(GRPOConfig, {"lora": False, "lr": None, "steps": 5}) == ["--no-lora", "--steps", "5"]
    with pytest.raises(SystemExit):
        parse_config(SFTConfig, ["--fresh-lm", "maybe"])
    with pytest.raises(ValueError, match="unknown options"):
        config_argv(GRPOConfig, {"stepz": 1})
    # optional numbers keep their type; tuples are comma lists
    g = parse_config(GRPOConfig, ["--max-new-tokens", "40", "--lr", "1e-3"])
    assert (g.max_new_tokens, g.lr) == (40, 1e-3)
    assert parse_config(DistillConfig, ["--channels", "(32, 48, 64)"]).channels == (32, 48, 64)


def test_write_atomic_file_and_folder(tmp_path):
    f = tmp_path / "state.pt"
    write_atomic(f, lambda t: t.write_text("one"))
    write_atomic(f, lambda t: t.write_text("two"))
    assert f.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]

    ck = tmp_path / "checkpoint"

    def folder(text):
        def write(t):
            t.mkdir()
            (t / "state.pt").write_text(text)
        return write

    write_atomic(ck, folder("1"))
    write_atomic(ck, folder("2"))
    assert (ck / "state.pt").read_text() == "2" and not (tmp_path / "checkpoint.old").exists()
    # a write that fails leaves the previous version in place
    def killed(t):
        t.mkdir()
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(ck, killed)
    assert latest(ck, "state.pt") == ck and (ck / "state.pt").read_text() == "2"
    # stopped between the two renames: the old version is found, and the next write completes
    ck.rename(tmp_path / "checkpoint.old")
    assert latest(ck, "state.pt") == tmp_path / "checkpoint.old"
    write_atomic(ck, folder("3"))
    assert latest(ck, "state.pt") == ck and not (tmp_path / "checkpoint.old").exists()
    assert latest(tmp_path / "nothing") is None


def test_progress_file(tmp_path):
    p = tmp_path / "job" / "progress.json"
    prog = Progress(p, "dpo", 4)
    assert read_progress(p)["state"] == "starting"
    prog.step(2, loss=0.5, reward=None)
    d = read_progress(p)
    assert d["state"] == "running" and d["step"] == 2 and d["history"] == [{"step": 2, "loss": 0.5}]
    prog.finish("done", "ok", bundle="b")
    assert json.loads(p.read_text())["bundle"] == "b" and not (tmp_path / "job" / "progress.json.tmp").exists()
    assert read_progress(tmp_path / "missing.json") is None
