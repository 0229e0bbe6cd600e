"""One-click jobs (real training subprocesses: run to the end and register, cancel mid-run) and the
studio's Fine-tune tab handlers, incl. the blind A/B win rate."""

from __future__ import annotations

import time
from itertools import islice
from types import SimpleNamespace

import pytest
import torch

from engine.bundle import load_bundle
from engine.tiny import make_tiny_random_bundle
from feedback.store import Store
from training.data import suite
from training.jobs import JobManager, build_command
from training.simulated_raters import SimulatedRater, generate, rate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    make_tiny_random_bundle(root / "tiny", seed=0)
    bundle = load_bundle(root / "tiny")
    store = Store(root / "data")
    samples = list(islice(suite.stream("train", seed=1, root=None, area=bundle.config.image_area,
                                       kinds=["grayscale", "invert"]), 2))
    edits = generate(store, bundle, samples, n=3, seed=2)
    rate(store, edits, [SimulatedRater("sim", noise=0.5, seed=0)], kinds=("pair", "thumb"))
    return SimpleNamespace(root=root, bundle=bundle, store=store, samples=samples)


def _wait(job, states, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = job.status()
        if st["state"] in states:
            return st
        time.sleep(0.5)
    raise AssertionError(f"job stuck in {job.status()['state']}:\n{job.log_tail(40)}")


def test_build_command_checks_options(tmp_path):
    cmd = build_command("grpo", tmp_path / "j", tmp_path, "b", "n", {"steps": 5, "reward": "verifier"})
    assert cmd[:2] == ["-m", "training.grpo"] and "--steps" in cmd and "--progress" in cmd
    cmd = build_command("kto", tmp_path / "j", tmp_path, "b", "n", {"epochs": 1})
    assert cmd[cmd.index("--method") + 1] == "kto"
    with pytest.raises(ValueError, match="unknown dpo options"):
        build_command("dpo", tmp_path, tmp_path, "b", "n", {"stepz": 1})
    with pytest.raises(ValueError, match="unknown method"):
        build_command("ppo", tmp_path, tmp_path, "b", "n", {})
    with pytest.raises(ValueError, match="not a bundle"):
        JobManager(tmp_path).start("dpo", str(tmp_path))


@pytest.mark.slow
def test_dpo_job_runs_and_registers(env):
    from studio.models import ModelRegistry

    jm = JobManager(env.store.data_dir)
    job = jm.start("dpo", str(env.root / "tiny"), name="tiny-dpo-job", epochs=1, batch_size=4, lr=1e-3)
    st = _wait(job, ("done", "failed"))
    assert st["state"] == "done", job.log_tail(40)
    assert st["step"] == st["steps"] > 0 and st["history"] and st["loss"] is not None
    reg = ModelRegistry(env.store.data_dir)
    key = jm.register(jm.get(job.id), reg)
    assert key == f"path:{(env.store.data_dir / 'bundles' / 'tiny-dpo-job').resolve()}"
    assert key in [c.key for c in reg.choices()]
    assert reg.get(key).config.notes["method"] == "dpo"
    assert [j.id for j in jm.list()] == [job.id]


@pytest.mark.slow
def test_cancel_stops_the_job(env, tmp_path):
    jm = JobManager(tmp_path / "data")
    job = jm.start("grpo", str(env.root / "tiny"), steps=10000, group_size=2, corpus="none", ckpt_every=1000)
    st = _wait(job, ("running", "failed"))
    assert st["state"] == "running", job.log_tail(40)
    # a page that did not start it (reloaded, another browser, a restarted server) finds it
    from studio import finetune_tab as ft

    page = SimpleNamespace(data_dir=tmp_path / "data")
    assert ft.current_job(page, None) == job.id and ft.current_job(page, "mine") == "mine"
    assert ft.current_job(SimpleNamespace(data_dir=tmp_path / "empty"), None) is None
    assert "**running**" in ft.poll(page, ft.current_job(page, None))[0]
    assert ft.cancel(page, ft.current_job(page, None)) == "Cancelled."
    assert job.cancel() is False  # already ended (by the other page)
    st = job.status()
    assert st["state"] == "cancelled" and not st["alive"]
    assert st["step"] < 10000 and job.bundle_path() is None
    assert job.cancel() is False  # already ended
    with pytest.raises(ValueError, match="has not finished"):
        jm.register(job)


def test_finetune_tab_builds_and_ab_win_rate(env, monkeypatch):
    import gradio as gr

    from studio import finetune_tab as ft
    from studio.app import StudioContext
    from studio.models import ModelRegistry

    other = make_tiny_random_bundle(seed=1, name="tiny-other")
    reg = ModelRegistry(env.store.data_dir, preloaded={"mem:a": env.bundle, "mem:b": other})
    ctx = StudioContext(store=env.store, registry=reg, default_model="mem:a")
    with gr.Blocks() as demo, gr.Tabs():
        ft.build_finetune_tab(ctx)
    assert any(getattr(b, "label", None) == "Fine-tune" for b in demo.blocks.values())
    assert any(getattr(b, "label", None) == "Your name (rater)" for b in demo.blocks.values())
    # inside the studio's page the tab rates under the page's one Rater box, not a second one
    with gr.Blocks() as page:
        ctx.rater_box = gr.Textbox(label="Rater")
        with gr.Tabs():
            ft.build_finetune_tab(ctx)
    assert not any(getattr(b, "label", None) == "Your name (rater)" for b in page.blocks.values())
    ctx.rater_box = None

    # handlers: readable refusals
    with pytest.raises(ValueError, match="in memory"):
        ft.start_job(ctx, next(iter(ft.METHODS)), "mem:a", "", 1, 1, "", "", False)
    with pytest.raises(ValueError, match="endpoint URL"):
        ft.start_job(ctx, "GRPO — online RL with a reward", f"path:{env.root / 'tiny'}", "", 1, 1,
                     "MLLM judge (OpenAI-compatible endpoint)", "", False)
    md, df, _ = ft.poll(ctx, None)
    assert "No job" in md and df.empty
    # a run on far fewer ratings than a useful one wants starts, with a warning that says so
    msg, jid = ft.start_job(ctx, next(iter(ft.METHODS)), f"path:{env.root / 'tiny'}", "few-pairs", 1, 1, "", "", False)
    assert "Started **DPO**" in msg and "⚠️ Only" in msg and "of the 100 ratings" in msg, msg
    # the status line that replaces the message while the job runs keeps the warning (a reloaded page too)
    status = ft.poll(SimpleNamespace(data_dir=env.store.data_dir), jid)[0]
    assert f"`{jid}`" in status and "⚠️ Only" in status and "of the 100 ratings" in status, status
    # the one-click job trains with the machine's cores (torch threads and OMP alike), not one
    import os

    cmd = ft.manager(ctx).get(jid).cmd
    assert cmd[cmd.index("--threads") + 1] == str(min(os.cpu_count() or 1, 8))
    ft.cancel(ctx, jid)
    # EARL-nano-family bundles get the learning rates measured on EARL-nano; DPO always gets the RPO term
    tiny = str(env.root / "tiny")
    assert ft.measured_settings("dpo", tiny, lora=False) == {"sft_weight": 20.0, "lr": 2e-5, "max_steps": ft.DPO_MAX_STEPS}
    assert ft.measured_settings("dpo", tiny, lora=True) == {"sft_weight": 20.0}
    assert ft.measured_settings("grpo", tiny, lora=False) == {"lr": 5e-5}
    assert ft.measured_settings("kto", tiny, lora=False) == {"lr": 2e-5}
    from training.jobs import build_command

    build_command("dpo", env.root / "j", env.store.data_dir, tiny, "n", ft.measured_settings("dpo", tiny, False))

    # blind A/B on held-out samples (the suite stream stands in for the fixed test split here)
    monkeypatch.setattr(ft, "_heldout", [dict(s, id=f"h{i}") for i, s in enumerate(env.samples)])
    with pytest.raises(ValueError, match="two different"):
        ft.ab_next(ctx, "mem:a", "mem:a")
    wins = {"tiny-random@0": 0, "tiny-other@0": 0}
    for k in range(4):
        rnd = ft.ab_next(ctx, "mem:a", "mem:b", seed=k)
        left = env.store.candidate(rnd["left"])
        assert left.settings["ab_test"] and rnd["left"] != rnd["right"]
        # this rater always prefers bundle "tiny-other", wherever it is shown
        choice = "left" if left.bundle_id == "tiny-other@0" else "right"
        wins["tiny-other@0"] += 1
        table = ft.ab_rate(ctx, rnd, choice, "tester")
    assert "| tiny-other@0 | 4 | 4 | 0 | 100% |" in table
    assert "| tiny-random@0 | 4 | 0 | 0 | 0% |" in table
    with pytest.raises(ValueError, match="Next pair"):
        ft.ab_rate(ctx, None, "left", "tester")


def test_dpo_starts_from_thumbs_alone(env, tmp_path):
    """Thumbs up and down on one edit's candidates are DPO pairs: the tab starts a DPO job from them, and
    refuses, with a readable message, a store with no rating that makes a pair."""
    from studio import finetune_tab as ft
    from studio.app import StudioContext
    from studio.models import ModelRegistry

    store = Store(tmp_path / "data")
    ctx = StudioContext(store=store, registry=ModelRegistry(store.data_dir, preloaded={}), default_model=None)
    base = f"path:{env.root / 'tiny'}"
    generate(store, env.bundle, env.samples[:1], n=3, seed=5)
    with pytest.raises(ValueError, match="No preference pairs yet"):
        ft.start_job(ctx, next(iter(ft.METHODS)), base, "", 1, 1, "", "", False)
    first, second, _ = store.candidates()
    store.add_rating("p", "thumb", "up", [first.id])
    store.add_rating("p", "thumb", "down", [second.id])
    c = store.counts()
    assert c["thumbs_up"] and c["thumbs_down"] and not c.get("preference_pairs"), c
    msg, jid = ft.start_job(ctx, next(iter(ft.METHODS)), base, "from-thumbs", 1, 1, "", "", False)
    assert "Started **DPO**" in msg
    ft.cancel(ctx, jid)
