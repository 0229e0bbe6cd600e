"""DPO / KTO from the feedback store: exact tokens and prompts rebuilt from the store, our DPO loss equal to
TRL's sigmoid DPO loss on the same log-probs, KTO's formula, star pairs, simulated raters, end-to-end
DPO/KTO runs writing new bundles, and the Bradley–Terry reward model."""

from __future__ import annotations

import copy
import json
import shutil
from collections import defaultdict
from itertools import islice
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.bundle import Bundle, load_bundle
from engine.layout import build_prompt
from engine.logprobs import sequence_logprobs
from engine.tiny import make_tiny_random_bundle
from feedback.pairs import StoreExamples, rating_groups, single_labels, star_pairs, thumb_pairs
from feedback.store import Store
from training.data import suite
from training.preference import (
    PrefConfig,
    SeqLogp,
    dpo_loss,
    kl_pairs,
    kto_loss,
    load_dpo_data,
    load_group_data,
    load_kto_data,
    train,
)
from training.simulated_raters import SimulatedRater, generate, rate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """A tiny bundle on disk and a store with 3 edits × 3 candidates, rated by two simulated raters."""
    root = tmp_path_factory.mktemp("pref")
    bundle = make_tiny_random_bundle(root / "tiny", seed=0)
    bundle = load_bundle(root / "tiny")
    store = Store(root / "data")
    samples = list(islice(suite.stream("train", seed=3, root=None, area=bundle.config.image_area,
                                       kinds=["grayscale", "vflip", "invert"]), 3))
    edits = generate(store, bundle, samples, n=3, seed=5)
    raters = [SimulatedRater("alice", noise=0.5, seed=1), SimulatedRater("bob", noise=0.5, seed=2)]
    counts = rate(store, edits, raters, kinds=("pair", "thumb", "star"))
    return SimpleNamespace(root=root, bundle=bundle, store=store, edits=edits, counts=counts)


def test_simulated_ratings_in_store(rated):
    c = rated.store.counts()
    assert c["candidates"] == 9 and c["raters"] == 2
    counts = dict(rated.counts)
    gap, agree = counts.pop("pair_with_gap"), counts.pop("pair_agreeing")
    assert counts == {"pair": 18, "thumb": 18, "star": 18}
    assert 0 <= agree <= gap <= 18
    assert c["thumbs_up"] + c["thumbs_down"] == 18
    # a noiseless rater always prefers the higher verifier score
    exact = SimulatedRater("exact", noise=0.0, seed=0)
    e = rated.edits[0]
    ids = exact.rate_pairs(rated.store, e)
    for r in rated.store.ratings("pair"):
        if r.id in ids and r.value in ("A", "B"):
            a, b = r.candidate_ids
            sa, sb = (e.scores[e.ids.index(x)] for x in (a, b))
            assert (sa > sb) == (r.value == "A")
    assert exact.pairs_agreeing == exact.pairs_with_gap  # noiseless: every pair with a gap is called right


def test_store_examples_rebuild_exact_prompt(rated):
    """The prompt rebuilt from the stored source reproduces the sampler's log-probs exactly."""
    ex = StoreExamples(rated.bundle, rated.store)
    cands = rated.store.candidates()
    for cand in cands[:3]:
        e = ex.example(cand)
        assert e is not None and e.gen_ids == cand.tokens
        grid = rated.bundle.vq.encode([rated.store.load_image(cand.source_hash)])[0]
        assert e.prompt_ids == build_prompt(rated.bundle.tokenizer, grid, cand.instruction, cand.think)
        with torch.no_grad():
            lp = sequence_logprobs(rated.bundle, e.prompt_ids, e.gen_ids, e.h, e.w, e.think)
        assert float(lp.sum()) == pytest.approx(cand.logprob_sum, abs=1e-3)
    # a candidate from another tokenizer/vocabulary is skipped, not trained on
    bad = copy.copy(cands[0])
    bad.id, bad.tokens = -1, [10**6]
    assert ex.example(bad) is None and sum(ex.skipped.values()) == 1


def test_star_pairs_higher_beats_lower():
    c = [SimpleNamespace(id=i, source_hash="s", instruction="x") for i in range(3)]
    other = SimpleNamespace(id=9, source_hash="t", instruction="x")
    stars = [SimpleNamespace(candidate=c[0], stars=2, rater="r"), SimpleNamespace(candidate=c[1], stars=5, rater="r"),
             SimpleNamespace(candidate=c[2], stars=2, rater="r"), SimpleNamespace(candidate=other, stars=1, rater="r"),
             SimpleNamespace(candidate=c[0], stars=1, rater="q")]
    pairs = {(a.id, b.id) for a, b, _ in star_pairs(stars)}
    assert pairs == {(1, 0), (1, 2)}  # ties and other photos/raters make no pair


def test_thumb_pairs_up_beats_down_within_one_edit():
    c = [SimpleNamespace(id=i, source_hash="s", instruction="x") for i in range(4)]
    other = SimpleNamespace(id=9, source_hash="t", instruction="x")
    thumbs = [SimpleNamespace(candidate=c[0], up=True, rater="r"), SimpleNamespace(candidate=c[1], up=False, rater="r"),
              SimpleNamespace(candidate=c[2], up=False, rater="r"), SimpleNamespace(candidate=c[3], up=True, rater="q"),
              SimpleNamespace(candidate=other, up=False, rater="r")]
    pairs = {(a.id, b.id) for a, b, _ in thumb_pairs(thumbs)}
    assert pairs == {(0, 1), (0, 2)}  # two downs make no pair; other raters and photos neither


def _trl_dpo_loss(per_token_c, per_token_r, ref_c, ref_r, beta, tmp_path):
    """TRL 1.16's DPOTrainer._compute_loss run on precomputed per-token log-probs.

    The trainer has no standalone loss function: its loss path takes ``model(...).log_probs`` (its fused LM
    head) and precomputed reference log-probs. We call that method with the trainer attributes it reads,
    taken from a real DPOConfig, and a module that returns our per-token log-probs as the LM output."""
    from accelerate import Accelerator
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=["sigmoid"], precompute_ref_log_probs=True,
                     report_to=[], use_cpu=True)
    per_token = torch.cat([per_token_c, per_token_r])  # batch is [chosen, rejected]
    b, t = per_token.shape

    class LogProbsLM(torch.nn.Module):
        def forward(self, **kw):
            z = torch.zeros(b, t)
            return SimpleNamespace(log_probs=per_token, entropy=z, mean_logits=z, is_top1=z.bool())

    lm = LogProbsLM().train()
    trainer = SimpleNamespace(
        model=lm, accelerator=Accelerator(cpu=True), aux_loss_enabled=False, beta=args.beta,
        precompute_ref_logps=args.precompute_ref_log_probs, loss_types=args.loss_type,
        loss_weights=args.loss_weights or [1.0], ld_alpha=args.ld_alpha, f_divergence_type=args.f_divergence_type,
        label_smoothing=args.label_smoothing, use_weighting=args.use_weighting, args=args,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    completion_mask = torch.cat([torch.zeros(b, 1, dtype=torch.long), (per_token != 0).long()], 1)
    inputs = {"input_ids": torch.zeros(b, t + 1, dtype=torch.long), "attention_mask": torch.ones(b, t + 1, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    return DPOTrainer._compute_loss(trainer, lm, inputs, False)


def test_dpo_loss_equals_trl(rated, tmp_path):
    pairs, info = load_dpo_data(rated.store, rated.bundle, use_stars=True)
    assert info["pairs"] == len(pairs) > 4 and set(info["by_source"]) <= {"pair", "stars", "thumbs"}
    pairs = pairs[:6]
    # policy: the tiny model nudged away from the reference, so the log-ratios are not zero
    pol = Bundle(rated.bundle.config, copy.deepcopy(rated.bundle.lm), rated.bundle.tokenizer, rated.bundle.vq,
                 rated.bundle.grid_embed)
    with torch.no_grad():
        for p in pol.lm.parameters():
            p.add_(torch.randn_like(p) * 0.02)

    def per_token(bundle, exs):
        rows = []
        for e in exs:
            with torch.no_grad():
                rows.append(sequence_logprobs(bundle, e.prompt_ids, e.gen_ids, e.h, e.w, e.think))
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)

    ch, rj = [a for a, _ in pairs], [b for _, b in pairs]
    t = max(len(e.gen_ids) for e in ch + rj)
    pc, pr = (torch.nn.functional.pad(per_token(pol, x), (0, t - per_token(pol, x).shape[1])) for x in (ch, rj))
    seq = SeqLogp()
    with torch.no_grad():
        ref_c, ref_r = seq.examples(rated.bundle, ch), seq.examples(rated.bundle, rj)
        pol_c, pol_r = seq.examples(pol, ch), seq.examples(pol, rj)
    assert torch.allclose(pol_c, pc.sum(1), atol=1e-4)
    for beta in (0.1, 0.5):
        ours, _, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta)
        theirs = _trl_dpo_loss(pc, pr, ref_c, ref_r, beta, tmp_path)
        assert float(ours.mean()) == pytest.approx(float(theirs), rel=1e-5)
        assert abs(float(ours.mean()) - float(torch.log(torch.tensor(2.0)))) > 1e-4  # not the trivial value


def test_kto_loss_formula():
    pi = torch.tensor([-10.0, -12.0, -9.0])
    ref = torch.tensor([-11.0, -11.0, -11.0])
    des = torch.tensor([True, False, True])
    kl = torch.tensor(0.3)
    out = kto_loss(pi, ref, des, kl, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    import math

    def s(x):
        return 1 / (1 + math.exp(-x))

    assert out.tolist() == pytest.approx([1 - s(0.5 * (1 - 0.3)), 2 * (1 - s(0.5 * (0.3 + 1))), 1 - s(0.5 * (2 - 0.3))])


def test_kto_mismatched_pairs(rated):
    items, info = load_kto_data(rated.store, rated.bundle)
    assert info["thumbs"] == 18 and info["up"] > 0 and info["down"] > 0
    exs = [e for e, _ in items[:5]]
    pairs = kl_pairs(exs)
    assert all(p.shape_key == c.shape_key and p is not c for p, c in pairs)


def test_kto_from_every_single_candidate_label(rated, tmp_path):
    """kto_from "all": thumbs as they are, stars of 4-5 good and 1-2 bad, a best-of-N pick good; A/B none."""
    shutil.copytree(rated.store.data_dir, tmp_path / "data")
    with Store(tmp_path / "data") as store:
        ids = rated.edits[0].ids
        store.add_rating("carol", "best_of_n", ids[1], ids)
        labels = single_labels(store)
        by_src = defaultdict(list)
        for cand, good, src in labels:
            by_src[src].append((cand.id, good))
        assert len(by_src["thumbs"]) == 18 and by_src["best_of_n"] == [(ids[1], True)]
        stars = {(s.candidate.id, s.rater): s.stars for s in store.stars()}
        assert len(by_src["stars"]) == sum(v != 3 for v in stars.values())
        assert {good for _, good in by_src["stars"]} <= {True, False}
        assert sum(g for _, g in by_src["stars"]) == sum(v >= 4 for v in stars.values())
        items, info = load_kto_data(store, rated.bundle, "all")
        assert len(items) == len(labels) and info["by_source"]["best_of_n"] == 1
        assert len(load_kto_data(store, rated.bundle)[0]) == 18  # the default: thumbs alone
        with pytest.raises(ValueError, match="kto_from"):
            load_kto_data(store, rated.bundle, "pairs")


def _gain(bundle, ref, exs):
    """How much log-prob each example gained in ``bundle`` over ``ref``."""
    seq = SeqLogp()
    with torch.no_grad():
        return seq.examples(bundle, exs) - seq.examples(ref, exs)


def _margin(bundle, ref, pairs):
    seq = SeqLogp()
    with torch.no_grad():
        ch, rj = [a for a, _ in pairs], [b for _, b in pairs]
        return float(((seq.examples(bundle, ch) - seq.examples(ref, ch)) - (seq.examples(bundle, rj) - seq.examples(ref, rj))).mean())


def test_dpo_run_prefers_chosen_and_writes_bundle(rated, tmp_path):
    parent = tmp_path / "parent"  # the rated bundle (same weights) with a reader folder beside its LM
    shutil.copytree(rated.root / "tiny", parent)
    (parent / "understanding").mkdir()
    (parent / "understanding" / "vocab.json").write_text("{}")
    cfg = PrefConfig(method="dpo", bundle=str(parent), data=str(rated.store.data_dir),
                     out=str(tmp_path / "dpo"), epochs=2, batch_size=8, lr=2e-3, beta=0.1, name="tiny-dpo",
                     progress=str(tmp_path / "dpo" / "progress.json"))
    path = train(cfg)
    assert path == rated.store.data_dir / "bundles" / "tiny-dpo"
    new = load_bundle(path)
    assert new.config.parent == "tiny-random@0" and new.config.notes["method"] == "dpo"
    assert (path / "understanding" / "vocab.json").read_text() == "{}"  # reads instructions as its parent did
    card = (path / "README.md").read_text()
    assert "DPO" in card and "pairs" in card
    pairs, _ = load_dpo_data(rated.store, rated.bundle, use_stars=True)
    assert _margin(new, rated.bundle, pairs) > 0  # chosen gained log-prob relative to rejected
    import json

    prog = json.loads((tmp_path / "dpo" / "progress.json").read_text())
    assert prog["state"] == "done" and prog["step"] == prog["steps"] > 0 and prog["bundle"] == str(path)


def test_dpo_max_steps_caps_the_epochs(rated, tmp_path):
    cfg = PrefConfig(method="dpo", bundle=str(rated.root / "tiny"), data=str(rated.store.data_dir), epochs=5,
                     batch_size=2, max_steps=2, lr=1e-4, out=str(tmp_path / "dpo"), bundle_out=str(tmp_path / "b"))
    train(cfg)
    metrics = json.loads((tmp_path / "dpo" / "metrics.json").read_text())
    assert metrics["steps"] == 2  # five epochs of 2-pair batches would be many more


def test_kto_run_writes_bundle(rated, tmp_path):
    cfg = PrefConfig(method="kto", bundle=str(rated.root / "tiny"), data=str(rated.store.data_dir), lora=True,
                     lora_r=4, out=str(tmp_path / "kto"), epochs=1, batch_size=9, lr=1e-2,
                     bundle_out=str(tmp_path / "kto-bundle"))
    path = train(cfg)
    new = load_bundle(path)
    assert new.config.notes["method"] == "kto"
    assert not any("lora" in k for k in new.lm.state_dict())  # merged into the weights
    items, _ = load_kto_data(rated.store, rated.bundle)
    delta = _gain(new, rated.bundle, [e for e, _ in items])
    up = torch.tensor([u for _, u in items])
    assert float(delta[up].mean()) > float(delta[~up].mean())  # desirable up relative to undesirable


def test_rating_groups_and_their_advantages(rated):
    """One group per rater, edit and form (thumbs, stars), per A/B answer and per best-of-N pick; members get
    EARL's advantage within their group, and groups graded all alike are left out."""
    groups = rating_groups(rated.store)
    thumbs = [g for g in groups if {x for _, x in g} <= {0.0, 1.0} and len(g) == 3]
    assert len(thumbs) >= 6 - 1  # two raters x three edits (an edit's three A/B answers are groups of two)
    for g in groups:
        assert len({(c.source_hash, c.instruction) for c, _ in g}) == 1  # one photo and instruction
    items, info = load_group_data(rated.store, rated.bundle)
    assert info["groups"] + info["graded_alike"] == len(groups) and info["groups"] > 0
    assert info["candidates"] == len(items)
    total = sum(a for _, a in items)
    assert abs(total) < 1e-6  # advantages sum to zero within each group, so over all of them


def test_group_run_moves_good_candidates_up_and_bad_ones_down(rated, tmp_path):
    cfg = PrefConfig(method="group", bundle=str(rated.root / "tiny"), data=str(rated.store.data_dir), epochs=2,
                     batch_size=8, lr=2e-3, out=str(tmp_path / "group"), bundle_out=str(tmp_path / "group-bundle"))
    path = train(cfg)
    new = load_bundle(path)
    assert new.config.notes["method"] == "group"
    items, _ = load_group_data(rated.store, rated.bundle)
    delta = _gain(new, rated.bundle, [e for e, _ in items])
    adv = torch.tensor([a for _, a in items])
    assert float(delta[adv > 0].mean()) > float(delta[adv < 0].mean())
    metrics = json.loads((tmp_path / "group" / "metrics.json").read_text())
    assert metrics["steps"] == 2 * -(-len(items) // 8)


def test_reward_model_learns_pairs(rated, tmp_path):
    from training.reward_model import train_reward_model
    from training.rewards import RewardModelReward, RewardSample

    rm = train_reward_model(rated.bundle, rated.store, tmp_path / "rm", epochs=300, bundle_path=str(rated.root / "tiny"))
    assert rm.meta["pairs_train"] > 0 and rm.meta["train_accuracy"] >= 0.7
    reward = RewardModelReward(tmp_path / "rm")  # loads its own frozen feature bundle
    cand = rated.store.candidates()[:2]
    ex = StoreExamples(rated.bundle, rated.store)
    samples = [RewardSample(source=None, output=None, instruction=c.instruction, prompt_ids=ex.example(c).prompt_ids,
                            gen_ids=c.tokens) for c in cand]
    samples.append(RewardSample(source=None, output=None, instruction="x"))  # no tokens: skipped
    scores = reward.score(samples)
    assert all(isinstance(s, float) for s in scores[:2]) and scores[2] is None
    assert scores[0] == pytest.approx(rm.score_tokens(samples[0].prompt_ids, samples[0].gen_ids), abs=1e-5)


def test_dpo_sft_weight_adds_chosen_nll(rated):
    """RPO: the batch loss is DPO's plus sft_weight x the chosen candidates' per-token NLL."""
    from training.preference import _dpo_batch
    from training.tuning import Policy

    pairs, _ = load_dpo_data(rated.store, rated.bundle, use_stars=True)
    batch = pairs[:4]
    policy = Policy(rated.bundle, lora=False)
    seq = SeqLogp()
    with torch.no_grad():
        exs = [a for a, _ in batch] + [b for _, b in batch]
        lp = seq.examples(rated.bundle, exs)
        ref_lp = {e.candidate_id: float(v) - 0.3 * i for i, (e, v) in enumerate(zip(exs, lp, strict=True))}
        plain, _ = _dpo_batch(policy, seq, batch, ref_lp, PrefConfig(beta=0.1))
        rpo, stats = _dpo_batch(policy, seq, batch, ref_lp, PrefConfig(beta=0.1, sft_weight=2.0))
    nll = torch.stack([-lp[i] / len(batch[i][0].gen_ids) for i in range(len(batch))])
    assert float(rpo - plain) == pytest.approx(2.0 * float(nll.sum()), rel=1e-5)
    assert stats["chosen_nll"] == pytest.approx(float(nll.mean()), rel=1e-5) and float(nll.mean()) > 0


def test_turned_candidates_replay_under_the_branching_constraint(tmp_path):
    """A candidate that came out turned on its side (W×H for an H×W source) is an example like any other: its
    tokens replay under the constraint with the transposed header, and its log-probs are the sampler's."""
    from PIL import Image

    from engine.api import edit_blocking
    from engine.image_io import fit_to_bundle
    from feedback.record import record_edit

    bundle = make_tiny_random_bundle(seed=4)
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    done = edit_blocking(bundle, photo, "Make the photo grayscale.", n=6, seed=0, transpose=True,
                         understand=False, full_resolution=False)
    with Store(tmp_path / "data") as store:
        record_edit(store, bundle, fit_to_bundle(bundle, photo), "Make the photo grayscale.", done,
                    {"think": False, "temperature": 1.0, "top_k": 2048, "top_p": 1.0, "transpose": True})
        cands = store.candidates()
        ex = StoreExamples(bundle, store)
        turned = [c for c in cands if c.grid_h > c.grid_w]
        assert turned and len(turned) < len(cands)
        for c in cands:
            e = ex.example(c)
            assert e is not None and e.transpose  # as sampled: the header was a choice for every candidate
            with torch.no_grad():
                lp = SeqLogp()(bundle, [e.prompt_ids], [e.gen_ids], [e.shape_key])
            assert float(lp[0]) == pytest.approx(c.logprob_sum, abs=1e-3)
