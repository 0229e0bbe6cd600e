"""Sampler: greedy oracle against transformers' generate, log-probs against one full forward pass,
valid grids for every seed, seed reproducibility in a batch or alone, cancellation."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from engine.constraint import FreeFormConstraint
from engine.layout import build_prompt, build_target, parse_generation, special_ids
from engine.logprobs import sequence_logprobs
from engine.sampler import _FastRunner, fp16_available, fp16_default, make_guidance, sample, sample_all
from engine.tiny import make_tiny_random_bundle

H, W = 4, 5
INSTR = "Make the photo grayscale."


@pytest.fixture(scope="module")
def plain():
    """Tiny random bundle without grid embedding (generate cannot add one)."""
    return make_tiny_random_bundle(seed=3, grid_embed=False)


@pytest.fixture(scope="module")
def gridded():
    b = make_tiny_random_bundle(seed=4, grid_embed=True)
    gen = torch.Generator().manual_seed(4)  # not the global RNG: other tests' seeding must not change this model
    with torch.no_grad():  # make the grid embedding matter
        for emb in (b.grid_embed.row, b.grid_embed.col, b.grid_embed.image):
            emb.weight.normal_(0, 0.5, generator=gen)
    return b


@pytest.fixture(scope="module")
def centred():
    """A grid embedding with centred sin/cos features, which read H and W off each whole grid."""
    b = make_tiny_random_bundle(seed=5, grid_embed=True, centred_freqs=4)
    with torch.no_grad():
        b.grid_embed.centred.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(5))
    return b


@pytest.fixture(scope="module")
def grid():
    return np.random.RandomState(0).randint(0, 64, (H, W))


def _generate(bundle, prompt, think, max_new_tokens):
    con = FreeFormConstraint(bundle.tokenizer, H, W, think, vocab_size=bundle.lm.config.vocab_size,
                             max_new_tokens=max_new_tokens)
    out = bundle.lm.generate(
        torch.tensor([prompt]), prefix_allowed_tokens_fn=con.prefix_allowed_tokens_fn(len(prompt)),
        max_new_tokens=con.max_new_tokens, do_sample=False, eos_token_id=con.sp.eos, pad_token_id=con.sp.pad,
    )
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("think", [False, True])
def test_greedy_equals_generate(plain, grid, think):
    prompt = build_prompt(plain.tokenizer, grid, INSTR, think)
    mnt = 40 if think else None
    ours = sample_all(plain, [prompt], H, W, [0], think=think, temperature=0, max_new_tokens=mnt)[0]
    ref = _generate(plain, prompt, think, mnt)
    assert ours.finished
    assert ours.tokens == ref
    parse_generation(plain.tokenizer, ours.tokens, expect_hw=(H, W))


def test_greedy_equals_generate_natural_think_end(plain, grid):
    """A model that ends its reasoning by itself (not by the budget) still matches generate."""
    b = copy.copy(plain)
    b.lm = copy.deepcopy(plain.lm)
    tok = b.tokenizer
    con = FreeFormConstraint(tok, H, W, True)
    text = con.masks[0].isfinite().nonzero().squeeze(1).tolist()
    end = con.sp.think_end
    with torch.no_grad():  # few text tokens compete with a boosted THINK_END
        for t in text[6:]:
            if t != end:
                b.lm.lm_head.weight[t] = 0
        b.lm.lm_head.weight[end] *= 2.5
    prompt = build_prompt(tok, grid, INSTR, True)
    ours = sample_all(b, [prompt], H, W, [0], think=True, temperature=0, max_new_tokens=80)[0]
    budget = 80 - con.image_len - 1
    assert 0 < ours.tokens.index(end) < budget  # ended naturally, after some text
    assert ours.tokens == _generate(b, prompt, True, 80)


@pytest.mark.parametrize("fast", [True, False])
def test_logprobs_match_full_forward_with_grid_embedding(gridded, grid, fast):
    tok = gridded.tokenizer
    prompts = [build_prompt(tok, grid, INSTR, True), build_prompt(tok, grid, "Flip the image horizontally.", True)]
    gens = sample_all(gridded, prompts, H, W, [5, 6], think=True, temperature=1.0, top_k=50, top_p=0.9,
                      max_new_tokens=60, fast=fast)
    ref = sequence_logprobs(gridded, prompts, [g.tokens for g in gens], H, W, True, max_new_tokens=60)
    for i, g in enumerate(gens):
        got = torch.tensor(g.logprobs)
        assert torch.allclose(got, ref[i, : len(g.tokens)], atol=1e-4), (got - ref[i, : len(g.tokens)]).abs().max()
    # the fast path and transformers' forward agree token for token
    other = sample_all(gridded, prompts, H, W, [5, 6], think=True, temperature=1.0, top_k=50, top_p=0.9,
                       max_new_tokens=60, fast=not fast)
    assert [g.tokens for g in other] == [g.tokens for g in gens]


@pytest.mark.parametrize("think", [False, True])
def test_logprobs_match_with_centred_grid_features(centred, grid, think):
    """The sampler embeds the prompt and the generation template separately, sequence_logprobs embeds
    whole sequences: both must see the same centred coordinates."""
    tok = centred.tokenizer
    prompts = [build_prompt(tok, grid, INSTR, think), build_prompt(tok, grid, "Flip the image horizontally.", think)]
    mnt = 60 if think else None
    gens = sample_all(centred, prompts, H, W, [7, 8], think=think, temperature=1.0, max_new_tokens=mnt)
    ref = sequence_logprobs(centred, prompts, [g.tokens for g in gens], H, W, think, max_new_tokens=mnt)
    for i, g in enumerate(gens):
        got = torch.tensor(g.logprobs)
        assert torch.allclose(got, ref[i, : len(g.tokens)], atol=1e-4), (got - ref[i, : len(g.tokens)]).abs().max()
    no_centre = copy.copy(centred)
    no_centre.grid_embed = copy.deepcopy(centred.grid_embed)
    no_centre.grid_embed.centred = None
    other = sequence_logprobs(no_centre, prompts, [g.tokens for g in gens], H, W, think, max_new_tokens=mnt)
    assert not torch.allclose(other, ref, atol=1e-3)  # the features do reach the model


@pytest.mark.parametrize("think", [False, True])
def test_teacher_forced_argmax_is_what_greedy_picks(gridded, grid, think):
    tok = gridded.tokenizer
    prompts = [build_prompt(tok, grid, INSTR, think), build_prompt(tok, grid, "Flip the image horizontally.", think)]
    mnt = 60 if think else None
    gens = sample_all(gridded, prompts, H, W, [0, 1], think=think, temperature=0, max_new_tokens=mnt)
    lp, best = sequence_logprobs(gridded, prompts, [g.tokens for g in gens], H, W, think, max_new_tokens=mnt,
                                 return_argmax=True)
    assert best.shape == lp.shape
    for i, g in enumerate(gens):
        assert best[i, : len(g.tokens)].tolist() == g.tokens
    single = sequence_logprobs(gridded, prompts[0], gens[0].tokens, H, W, think, max_new_tokens=mnt,
                               return_argmax=True)[1]
    assert single.tolist() == gens[0].tokens


def test_sequence_logprobs_is_differentiable(gridded, grid):
    tok = gridded.tokenizer
    prompt = build_prompt(tok, grid, INSTR, False)
    gen = sample_all(gridded, [prompt], H, W, [1])[0]
    lp = sequence_logprobs(gridded, prompt, gen.tokens, H, W, False)
    assert lp.shape == (len(gen.tokens),) and lp.requires_grad
    lp.sum().backward()
    assert gridded.lm.lm_head.weight.grad is not None and gridded.grid_embed.row.weight.grad is not None
    gridded.lm.zero_grad(set_to_none=True)
    gridded.grid_embed.zero_grad(set_to_none=True)
    # forced tokens (header, EOL, EOF, IMG_END, EOS) have log-prob exactly 0, visual ones below 0
    con = FreeFormConstraint(tok, H, W, False)
    forced = torch.tensor([t != -1 for t in con.template])
    assert bool((lp.detach()[forced] == 0).all()) and bool((lp.detach()[~forced] < 0).all())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_sample_parses(gridded, grid, seed):
    tok = gridded.tokenizer
    think = seed % 2 == 1
    prompt = build_prompt(tok, grid, INSTR, think)
    g = make_guidance(tok, grid, 2, think, text_scale=3.0, image_scale=1.5)
    gens = sample_all(gridded, [prompt, prompt], H, W, [seed, seed + 100], think=think, temperature=1.3,
                      top_k=7, top_p=0.8, guidance=g, max_new_tokens=70 if think else None)
    for gen in gens:
        assert gen.finished
        reasoning, out = parse_generation(tok, gen.tokens, expect_hw=(H, W))
        assert out.shape == (H, W) and out.max() < 64
        if think:
            assert "<|visual" not in reasoning


def test_same_seed_same_output_in_batch_or_alone(gridded, grid):
    tok = gridded.tokenizer
    p_long = build_prompt(tok, grid, INSTR, True)
    p_short = build_prompt(tok, grid, "Flip it.", True)  # different length: left padding in the batch
    kw = dict(think=True, temperature=1.0, top_k=20, max_new_tokens=50)
    batch = sample_all(gridded, [p_long, p_short, p_long], H, W, [11, 12, 13], **kw)
    alone = sample_all(gridded, [p_short], H, W, [12], **kw)[0]
    again = sample_all(gridded, [p_long], H, W, [13], **kw)[0]
    assert batch[1].tokens == alone.tokens
    assert batch[2].tokens == again.tokens
    assert batch[0].tokens != batch[2].tokens  # different seeds differ
    np.testing.assert_allclose(batch[1].logprobs, alone.logprobs, atol=1e-5)
    # guidance changes the distribution, not the reproducibility
    g = make_guidance(tok, grid, 1, False, text_scale=2.0, image_scale=1.0)
    pa = build_prompt(tok, grid, INSTR, False)
    a = sample_all(gridded, [pa], H, W, [7], guidance=g)[0]
    b = sample_all(gridded, [pa], H, W, [7], guidance=g)[0]
    c = sample_all(gridded, [pa], H, W, [7])[0]
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_cancellation_stops_early(gridded, grid):
    tok = gridded.tokenizer
    prompt = build_prompt(tok, grid, INSTR, False)
    cancel = threading.Event()
    steps = 0
    for _events in sample(gridded, [prompt], H, W, [0], cancel=cancel):
        steps += 1
        if steps == 3:
            cancel.set()
    assert steps == 3


def test_bad_arguments(gridded, grid):
    prompt = build_prompt(gridded.tokenizer, grid, INSTR, False)
    with pytest.raises(ValueError, match="seeds"):
        sample_all(gridded, [prompt], H, W, [0, 1])
    with pytest.raises(ValueError, match="top_p"):
        sample_all(gridded, [prompt], H, W, [0], top_p=0)
    with pytest.raises(ValueError, match="too small"):
        sample_all(gridded, [prompt], H, W, [0], max_new_tokens=10)


def test_multi_token_think_markers_match_generate(grid):
    """Emu3's tokenizer writes the think markers as plain text: the sampler still matches generate."""
    from transformers import Emu3ForCausalLM

    from engine.bundle import Bundle, BundleConfig
    from engine.tiny import tiny_lm_config
    from tests.test_layout import emu3_like_tokenizer

    tok = emu3_like_tokenizer()
    torch.manual_seed(0)
    lm = Emu3ForCausalLM(tiny_lm_config(tok)).eval()
    b = Bundle(config=BundleConfig(codebook_size=64), lm=lm, tokenizer=tok, vq=None)
    prompt = build_prompt(tok, grid, INSTR, True)
    ours = sample_all(b, [prompt], H, W, [0], think=True, temperature=0, max_new_tokens=50)[0]
    assert ours.tokens == _generate(b, prompt, True, 50)
    parse_generation(tok, ours.tokens, expect_hw=(H, W))
    sampled = sample_all(b, [prompt], H, W, [1], think=True, top_k=30, max_new_tokens=50)[0]
    parse_generation(tok, sampled.tokens, expect_hw=(H, W))
    ref = sequence_logprobs(b, prompt, sampled.tokens, H, W, True, max_new_tokens=50)
    assert torch.allclose(torch.tensor(sampled.logprobs), ref, atol=1e-4)


def test_forced_prefix_keeps_the_given_rows_and_samples_the_rest(gridded, grid):
    tok = gridded.tokenizer
    prompt = build_prompt(tok, grid, INSTR, False)
    target = build_target(tok, grid[::-1], None)
    k = 2  # rows given: IMG_START "H*W" IMG_TOKEN, then k rows of W + EOL
    n_head = target.index(special_ids(tok).img_token) + 1
    prefix = target[: n_head + k * (W + 1)]
    free = sample_all(gridded, [prompt, prompt], H, W, [5, 6], temperature=1.0)
    given = sample_all(gridded, [prompt, prompt], H, W, [5, 6], temperature=1.0, forced_prefix=[prefix, prefix[:3]])
    _, out = parse_generation(tok, given[0].tokens, expect_hw=(H, W))
    np.testing.assert_array_equal(out[:k], grid[::-1][:k])  # the given rows, then sampled ones
    # the rest is conditioned on what was given: its log-probs differ from those of the free sample
    # (slightly: this random model hardly depends on its context)
    assert not np.allclose(given[0].logprobs[len(prefix):], free[0].logprobs[len(prefix):], rtol=0, atol=1e-6)
    assert given[1].tokens == free[1].tokens  # a prefix of template tokens only changes nothing
    assert all(lp == 0.0 for lp in given[0].logprobs[: len(prefix)])
    bad = list(prefix)
    bad[n_head] = special_ids(tok).eol  # EOL where a visual token must come
    with pytest.raises(ValueError, match="not allowed"):
        sample_all(gridded, [prompt], H, W, [5], forced_prefix=[bad])


def test_results_do_not_depend_on_the_callers_threads(gridded, grid):
    """The prefill runs on the caller's threads, decoding on one: the same seed must give the same edit."""
    prompts = [build_prompt(gridded.tokenizer, grid, INSTR, False)] * 2
    old = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(sample_all(gridded, prompts, H, W, [3, 4], temperature=1.0))
            assert torch.get_num_threads() == n  # restored after sampling
    finally:
        torch.set_num_threads(old)
    assert [g.tokens for g in runs[0]] == [g.tokens for g in runs[1]]
    assert [g.logprobs for g in runs[0]] == [g.logprobs for g in runs[1]]


# -- half-precision decoding weights ---------------------------------------------------------------

needs_fbgemm = pytest.mark.skipif(not fp16_available(), reason="this torch build has no fbgemm kernels")


def _bf16_rounded(bundle):
    """A copy whose LM weights are bfloat16 values held in float32, like every bundle loaded from disk."""
    b = copy.deepcopy(bundle)
    with torch.no_grad():
        for p in b.lm.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return b


@needs_fbgemm
def test_fp16_decoding_is_exact_for_bfloat16_weights(gridded, grid):
    """A bfloat16 weight of ordinary size is exactly a float16: same tokens, same log-probs, in a batch or alone."""
    b = _bf16_rounded(gridded)
    tok = b.tokenizer
    p_long = build_prompt(tok, grid, INSTR, True)
    p_short = build_prompt(tok, grid, "Flip it.", True)
    kw = dict(think=True, temperature=1.0, top_k=20, max_new_tokens=50)
    exact = sample_all(b, [p_long, p_short], H, W, [11, 12], **kw)
    half = sample_all(b, [p_long, p_short], H, W, [11, 12], fp16=True, **kw)
    alone = sample_all(b, [p_short], H, W, [12], fp16=True, **kw)[0]
    assert [g.tokens for g in half] == [g.tokens for g in exact]
    assert alone.tokens == half[1].tokens
    for h_, e_ in zip(half, exact, strict=True):
        np.testing.assert_allclose(h_.logprobs, e_.logprobs, atol=1e-4)
    pa = build_prompt(tok, grid, INSTR, False)
    assert (sample_all(b, [pa], H, W, [5], fp16=True)[0].tokens == sample_all(b, [pa], H, W, [5])[0].tokens)


@needs_fbgemm
def test_fp16_runner_prefill_exact_and_steps_close(gridded):
    """float32 weights (a model in training) are rounded: a decoding step's logits move a little."""
    lm = gridded.lm
    d = lm.config.hidden_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(2, 12, d, generator=g)
    step = torch.randn(2, 1, d, generator=g)
    pos = torch.arange(12)[None].repeat(2, 1)
    out = {}
    with torch.no_grad():
        for half in (False, True):
            r = _FastRunner(lm, 2, 20, fp16=half)
            out[half] = r.forward(prompt, 0, pos, None), r.forward(step, 12, torch.full((2, 1), 12), None)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=0)  # the prefill keeps float32
    exact, half = out[False][1], out[True][1]
    assert not torch.equal(exact, half)  # the half-precision copies are used
    torch.testing.assert_close(half, exact, rtol=0, atol=1e-2)


@needs_fbgemm
def test_fp16_packs_follow_weight_updates(gridded):
    """The packed weights are cached per LM and rebuilt when training changes the weights in place."""
    b = copy.deepcopy(gridded)
    r1 = _FastRunner(b.lm, 1, 8, fp16=True)
    assert _FastRunner(b.lm, 1, 8, fp16=True).half_head is r1.half_head  # cached
    with torch.no_grad():
        b.lm.lm_head.weight.mul_(2.0)
    r2 = _FastRunner(b.lm, 1, 8, fp16=True)
    assert r2.half_head is not r1.half_head
    x = torch.randn(1, b.lm.config.hidden_size)
    y1 = torch.ops.quantized.linear_dynamic_fp16(x, r1.half_head)
    y2 = torch.ops.quantized.linear_dynamic_fp16(x, r2.half_head)
    torch.testing.assert_close(y2, 2 * y1)


def test_fp16_refuses_what_it_cannot_run(gridded, grid):
    prompt = build_prompt(gridded.tokenizer, grid, INSTR, False)
    with pytest.raises(ValueError, match="fp16"):
        sample_all(gridded, [prompt], H, W, [0], fast=False, fp16=True)
    bf16 = copy.deepcopy(gridded)
    bf16.lm.to(torch.bfloat16)
    bf16.grid_embed.to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp16"):
        sample_all(bf16, [prompt], H, W, [0], fp16=True)
    assert not fp16_default(bf16) and fp16_default(gridded) == fp16_available()


def test_forced_eol_shares_the_forward_pass_of_the_rows_last_code(gridded, grid, monkeypatch):
    """No-think: one pass for the prompt, then one per code except the last; a row's EOL rides along
    with its last code (H - 1 passes fewer than one per token); log-probs still match teacher forcing."""
    calls: list[int] = []
    real = _FastRunner.forward

    def counted(self, emb, start, positions, attn_mask):
        calls.append(emb.shape[1])
        return real(self, emb, start, positions, attn_mask)

    monkeypatch.setattr(_FastRunner, "forward", counted)
    prompt = build_prompt(gridded.tokenizer, grid, INSTR, False)
    g = sample_all(gridded, [prompt], H, W, [3], temperature=1.0)[0]
    assert len(calls) == H * W  # prefill + H*W - 1 decoding passes
    assert calls[1:].count(2) == H - 1 and set(calls[1:]) == {1, 2}
    assert parse_generation(gridded.tokenizer, g.tokens, expect_hw=(H, W))[1].shape == (H, W)
    with torch.no_grad():
        ref = sequence_logprobs(gridded, [prompt], [g.tokens], H, W, False)[0, : len(g.tokens)]
    np.testing.assert_allclose(g.logprobs, ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("think", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_speculative_decoding_keeps_every_token_and_logprob(gridded, grid, think, temperature, forward_passes):
    passes = forward_passes
    prompts = [build_prompt(gridded.tokenizer, grid, INSTR, think)] * 3
    for n in (1, 3):
        passes.clear()
        plain = sample_all(gridded, prompts[:n], H, W, list(range(7, 7 + n)), think=think, temperature=temperature)
        passes.clear()
        spec = sample_all(gridded, prompts[:n], H, W, list(range(7, 7 + n)), think=think, temperature=temperature,
                          speculate=16)
        assert max(passes) > 2  # it fed guesses
        for a, b in zip(plain, spec, strict=True):
            assert a.tokens == b.tokens
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
            assert b.finished


def test_speculation_is_off_where_it_cannot_run(gridded, grid, forward_passes):
    passes = forward_passes
    prompt = build_prompt(gridded.tokenizer, grid, INSTR, False)
    guidance = make_guidance(gridded.tokenizer, grid, 1, False, text_scale=2.0)
    sample_all(gridded, [prompt], H, W, [1], guidance=guidance, speculate=16)
    assert max(passes[1:]) <= 2  # guidance: one token per pass (two with a forced EOL)
    passes.clear()
    no_image = build_prompt(gridded.tokenizer, None, INSTR, False)
    sample_all(gridded, [no_image], H, W, [1], speculate=16)
    assert max(passes[1:]) <= 2  # nothing to copy from


@pytest.mark.parametrize("think", [False, True])
def test_right_guesses_save_passes_and_wrong_ones_change_nothing(gridded, grid, think, monkeypatch, forward_passes):
    """Guesses from an oracle that knows each candidate's plain output, wrong at every 5th cell (at a
    different cell per candidate, so candidates keep different counts): same tokens, far fewer passes."""
    import engine.drafts

    hh = ww = 8  # the tiny model's largest grid: long enough for the hit rate to climb
    big = np.random.RandomState(1).randint(0, 64, (hh, ww))
    prompts = [build_prompt(gridded.tokenizer, big, INSTR, think)] * 3
    seeds = [11, 12, 13]
    passes = forward_passes
    plain = sample_all(gridded, prompts, hh, ww, seeds, think=think, temperature=1.0)
    n_plain = len(passes)
    passes.clear()
    truth = [parse_generation(gridded.tokenizer, g.tokens, expect_hw=(hh, ww))[1] for g in plain]
    made: list[int] = []

    class Oracle:
        def __init__(self, source, out_hw, perms):
            self.i = len(made)
            made.append(self.i)

        def guess(self, r, c):
            right = int(truth[self.i][r, c])
            return (right + 1) % 64 if (r * ww + c + self.i) % 5 == 0 else right

        def observe(self, r, c, code):
            return self.guess(r, c) == code

    monkeypatch.setattr(engine.drafts, "CopyDrafter", Oracle)
    spec = sample_all(gridded, prompts, hh, ww, seeds, think=think, temperature=1.0, speculate=16)
    assert made == [0, 1, 2]
    for a, b in zip(plain, spec, strict=True):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert len(passes) <= n_plain - 20, (n_plain, passes)
