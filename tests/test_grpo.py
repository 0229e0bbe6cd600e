"""GRPO: advantages, the per-token loss, sampler/training log-prob agreement, a step moving the policy
toward the better candidate, LoRA merge, exact resume after a kill, and 2-process accelerate."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.bundle import Bundle, load_bundle
from engine.logprobs import sequence_logprobs
from training.grpo import (
    GRPOConfig,
    SuitePrompts,
    advantages,
    group_loss,
    grpo_token_loss,
    rollout_fp16,
    run_group,
    train,
)
from training.rewards import VerifierReward
from training.tuning import Policy, make_optimizer

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


def test_advantages_formula_and_dropping():
    r = [1.0, 2.0, 3.0, None]
    a = advantages(r)
    t = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    expect = ((t - t.mean()) / (t.std() + 1e-4)).tolist()
    assert a[:3] == pytest.approx(expect) and a[3] is None
    assert advantages([5.0, 5.0, 5.0]) is None  # no variation: dropped
    assert advantages([5.0, None, None]) is None  # one scored member: dropped


def test_token_loss_kl_and_clipping():
    logp = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    adv = torch.tensor([2.0])
    # k3 KL is 0 when the policy equals the reference, positive otherwise
    loss, st = grpo_token_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.1)
    assert st["kl"] == pytest.approx(0.0)
    loss.backward()
    # −A·mean(logp) over the two chosen tokens: d/dlogp = −A/2 (the masked token gets nothing)
    assert logp.grad[0].tolist() == pytest.approx([-1.0, -1.0, 0.0])
    _, st = grpo_token_loss(logp, logp.detach(), logp.detach() - 0.5, adv, mask, beta=0.1)
    d = torch.tensor(-0.5)
    assert st["kl"] == pytest.approx(float(torch.exp(d) - d - 1))
    # PPO clipping: a ratio far above 1+eps with A > 0 has no gradient
    lp = torch.tensor([[0.0]], requires_grad=True)
    loss, st = grpo_token_loss(lp, torch.tensor([[-1.0]]), lp.detach(), adv, torch.tensor([[True]]), 0.0, clip_eps=0.2)
    loss.backward()
    assert lp.grad.item() == 0.0 and st["clip_frac"] == 1.0


def _policy(tiny_bundle, lora=False):
    b = Bundle(tiny_bundle.config, copy.deepcopy(tiny_bundle.lm), tiny_bundle.tokenizer, tiny_bundle.vq,
               copy.deepcopy(tiny_bundle.grid_embed), None)
    return Policy(b, lora=lora, lora_r=4, lora_alpha=8)


def _group(policy, cfg, step=0):
    data = SuitePrompts(cfg, policy.bundle, 0)
    s = data.get(step, 0)
    return run_group(policy, s, [11, 12, 13, 14], cfg, VerifierReward("pq"))


def test_step_moves_policy_toward_better_candidate(tiny_bundle):
    cfg = GRPOConfig(corpus=None, group_size=4, beta=0.0, kinds="grayscale")
    policy = _policy(tiny_bundle)
    grp = _group(policy, cfg)
    # sampler log-probs equal the training recomputation (same constraint, same softmaxes)
    adv = [1.5, -0.5, -0.5, -0.5]
    opt = make_optimizer(policy, lr=3e-3)
    loss, n, st = group_loss(policy, grp, adv, cfg)
    assert n == 4 and st["logprob_mismatch"] < 1e-3
    before = _seq_logp(policy.bundle, grp)
    (loss / n).backward()
    opt.step()
    after = _seq_logp(policy.bundle, grp)
    delta = after - before
    assert delta[0] > 0 and all(delta[i] < delta[0] for i in (1, 2, 3))
    # the frozen reference did not move
    with policy.reference() as ref:
        assert torch.allclose(_seq_logp(ref, grp), _seq_logp(Bundle(tiny_bundle.config, tiny_bundle.lm,
                              tiny_bundle.tokenizer, tiny_bundle.vq, tiny_bundle.grid_embed), grp))


def _seq_logp(bundle, grp):
    with torch.no_grad():
        gens = [g.tokens for g in grp["gens"]]
        lp = sequence_logprobs(bundle, [grp["prompt"]] * len(gens), gens, grp["h"], grp["w"], grp["think"])
    return lp.sum(1)


def test_lora_step_and_merge(tiny_bundle):
    cfg = GRPOConfig(corpus=None, group_size=4, kinds="grayscale")
    policy = _policy(tiny_bundle, lora=True)
    names = list(policy.named_trainable())
    assert names and all("lora_" in n for n in names)
    grp = _group(policy, cfg)
    opt = make_optimizer(policy, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss, n, _ = group_loss(policy, grp, [1.0, -1.0, 0.5, -0.5], cfg)
        (loss / n).backward()
        opt.step()
    trained = _seq_logp(policy.bundle, grp)
    with policy.reference() as ref:
        assert not torch.allclose(_seq_logp(ref, grp), trained)  # the adapter changed something
    merged = policy.merged_bundle()
    assert not hasattr(merged.lm, "peft_config")
    assert torch.allclose(_seq_logp(merged, grp), trained, atol=1e-4)


class _LowCodes:
    """A reward on the tokens themselves: 10 × the share of visual codes in the lower half of the codebook.
    Learnable by a tiny random model, so it checks the loop's sign and plumbing end to end."""

    def __init__(self, tok):
        from engine.layout import special_ids

        self.code_of = special_ids(tok).code_of
        self.stats = {}

    def score(self, samples):
        out = []
        for s in samples:
            c = self.code_of[torch.tensor(s.gen_ids)]
            c = c[c >= 0]
            out.append(float((c < 32).float().mean()) * 10)
        return out


def test_grpo_loop_raises_reward(tiny_bundle):
    cfg = GRPOConfig(corpus=None, group_size=4, kinds="grayscale")
    policy = _policy(tiny_bundle)
    reward = _LowCodes(tiny_bundle.tokenizer)
    s = SuitePrompts(cfg, policy.bundle, 0).get(0, 0)

    def mean_reward():
        g = run_group(policy, s, list(range(1000, 1008)), cfg, reward)
        return sum(g["rewards"]) / len(g["rewards"])

    before = mean_reward()
    opt = make_optimizer(policy, lr=1e-2)
    for step in range(8):
        g = run_group(policy, s, [step * 10 + i for i in range(4)], cfg, reward)
        adv = advantages(g["rewards"])
        if adv is None:
            continue
        opt.zero_grad()
        loss, n, _ = group_loss(policy, g, adv, cfg)
        (loss / n).backward()
        opt.step()
    after = mean_reward()
    assert after > before + 1.0, (before, after)


def test_fp16_rollouts_sample_what_the_float32_policy_scores(tiny_bundle):
    from engine.sampler import fp16_available, fp16_default

    policy = _policy(tiny_bundle)
    assert rollout_fp16(policy.bundle, GRPOConfig()) == fp16_default(policy.bundle)
    assert rollout_fp16(policy.bundle, GRPOConfig(fp16_rollouts="false")) is False
    with pytest.raises(ValueError, match="fp16_rollouts"):
        rollout_fp16(policy.bundle, GRPOConfig(fp16_rollouts="half"))
    if not fp16_available():
        pytest.skip("no fbgemm kernels in this torch build")
    cfg = GRPOConfig(corpus=None, group_size=4, kinds="grayscale", fp16_rollouts="true")
    s = SuitePrompts(cfg, policy.bundle, 0).get(0, 0)
    grp = run_group(policy, s, [1, 2, 3, 4], cfg, _LowCodes(policy.bundle.tokenizer))
    exact = sequence_logprobs(policy.bundle, [grp["prompt"]] * 4, [g.tokens for g in grp["gens"]],
                              grp["h"], grp["w"], grp["think"]).detach()
    for i, g in enumerate(grp["gens"]):
        got = torch.tensor(g.logprobs)
        # the tiny random LM's float32 weights are not exact in float16: close, not equal
        assert torch.allclose(got, exact[i, : len(got)], atol=2e-2), (got - exact[i, : len(got)]).abs().max()
    assert all(len(g.tokens) == len(grp["gens"][0].tokens) for g in grp["gens"])  # complete edits


def _cmd(out: Path, bundle: Path, steps: int) -> list[str]:
    return ["-m", "training.grpo", "--bundle", str(bundle), "--out", str(out), "--steps", str(steps),
            "--group-size", "2", "--reward", "verifier.pq", "--corpus", "none", "--ckpt-every", "1",
            "--kinds", "grayscale,rotate180", "--lr", "1e-3", "--progress", str(out / "progress.json")]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from engine.tiny import make_tiny_random_bundle

    p = tmp_path_factory.mktemp("grpo") / "tiny"
    make_tiny_random_bundle(p, seed=0)
    return p


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, tiny_path):
    steps = 6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *_cmd(killed, tiny_path, steps)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    state = killed / "checkpoint" / "state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            try:
                if torch.load(state, weights_only=False)["step"] >= 2:
                    break
            except Exception:  # being renamed into place right now
                pass
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    k = torch.load(killed / "checkpoint" / "state.pt", weights_only=False)["step"]
    assert 2 <= k < steps
    assert not (killed / "bundle").exists()
    res = subprocess.run([sys.executable, *_cmd(killed, tiny_path, steps)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from step {k}" in res.stdout
    hist = json.loads((killed / "progress.json").read_text())
    assert hist["state"] == "done" and hist["step"] == steps

    # the same run, uninterrupted (in this process)
    ref = tmp_path / "ref"
    from training.common import parse_config

    cfg = parse_config(GRPOConfig, _cmd(ref, tiny_path, steps)[2:])
    train(cfg)
    a = load_file(str(killed / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(ref / "checkpoint" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    sa = torch.load(killed / "checkpoint" / "state.pt", weights_only=False)
    sb = torch.load(ref / "checkpoint" / "state.pt", weights_only=False)
    assert sa["step"] == sb["step"] == steps and sa["totals"] == sb["totals"]
    for ta, tb in zip(sa["opt"]["state"].values(), sb["opt"]["state"].values(), strict=True):
        assert torch.equal(ta["exp_avg"], tb["exp_avg"]) and torch.equal(ta["exp_avg_sq"], tb["exp_avg_sq"])
    # the output bundle: a loadable new version with its card
    out = load_bundle(ref / "bundle")
    assert out.config.parent == "tiny-random@0" and out.config.notes["method"] == "grpo"
    assert "GRPO" in (ref / "bundle" / "README.md").read_text()
    assert any((ref / "tb").iterdir())
    # the last checkpoint exported as a bundle is the run's final model
    from training.tuning import export_checkpoint

    mid = load_bundle(export_checkpoint(ref, tmp_path / "exported"))
    assert mid.config.name == f"tiny-random-grpo-step{steps}"
    assert mid.weights_hash() == out.weights_hash()


@pytest.mark.slow
def test_accelerate_two_cpu_processes(tmp_path, tiny_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # --multi_gpu picks accelerate's torchrun launcher; on a machine without GPUs the processes run on
    # the CPU and Accelerator(cpu=True) joins them with gloo (--cpu alone would start one process)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           *_cmd(out, tiny_path, 2)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "2 process(es)" in res.stdout
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["totals"]["groups"] == 4  # 2 per step
    assert (out / "bundle" / "bundle.json").exists()
