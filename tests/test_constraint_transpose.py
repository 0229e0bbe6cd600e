"""The transposed header: a non-square grid may come out as W×H (a quarter turn), the model choosing at the
header. Constraint (both headers and nothing else, replay), sampler (both loops, batches of mixed shapes),
log-probs, ``generate`` and ``engine.edit`` with the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine import tokens as T
from engine.constraint import CHOICE, VIS, FreeFormConstraint, constraint_for
from engine.layout import build_prompt, build_target, grid_positions, parse_generation, special_ids
from engine.logprobs import sequence_logprobs
from engine.sampler import sample_all
from engine.text_tokenizer import build_nano_tokenizer
from engine.tiny import TINY_TEXTS, make_tiny_random_bundle
from tests.test_layout import emu3_like_tokenizer

H, W = 3, 5
INSTR = "Make the photo grayscale."


def merging_bpe_tokenizer():
    """A byte-level BPE that merges across digits and '*' (no pre-tokenizer split): "3*5" is one token and
    "5*3" two, so the two headers differ in length."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    specials = [t for t in T.STRUCTURAL if t not in (T.THINK_START, T.THINK_END)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(TINY_TEXTS + ["3*5"] * 20, trainer=trainer)
    bpe.add_special_tokens([AddedToken(T.visual_token_name(i), special=True, normalized=False) for i in range(64)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=T.BOS, eos_token=T.EOS, pad_token=T.PAD)


TOKENIZERS = {
    "nano": lambda: build_nano_tokenizer(TINY_TEXTS, 64, 400),
    "bpe": emu3_like_tokenizer,
    "bpe-merging": merging_bpe_tokenizer,
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tok(request):
    return TOKENIZERS[request.param]()


@pytest.fixture(scope="module")
def grid():
    return np.random.RandomState(0).randint(0, 64, (H, W))


def _walk(con: FreeFormConstraint, ids: list[int]) -> list[set[int]]:
    """The allowed tokens at each position of ``ids``, walking the state machine."""
    s, allowed = con.start(), []
    for t in ids:
        allowed.append(set(con._allowed[con.mask_row(s)].tolist()))
        con.advance(s, t)
    return allowed


def test_both_headers_are_allowed_and_nothing_else(tok, grid):
    sp = special_ids(tok)
    con = FreeFormConstraint(tok, H, W, think=False, transpose=True)
    assert con.shapes == ((H, W), (W, H))
    same, turned = build_target(tok, grid, None), build_target(tok, grid.T, None)
    if len(sp.header_ids(H, W)) != len(sp.header_ids(W, H)):
        assert len(same) != len(turned)  # headers of different lengths go through the same code
    for ids in (same, turned):
        allowed = _walk(con, ids)
        k = con.choice_pos
        assert allowed[k] == {same[k], turned[k]} and same[k] != turned[k]
        for i, a in enumerate(allowed):
            if i != k:
                assert len(a) == 1 or a == set(sp.visual_ids.tolist()), i
        assert ids[:k] == same[:k]  # the shared part of the header is forced
    # a third shape, or a turned grid without the flag, is refused
    with pytest.raises(ValueError, match="not allowed|after EOS"):
        con.replay(build_target(tok, np.zeros((W, W), dtype=np.int64), None))
    with pytest.raises(ValueError, match="not allowed|after EOS"):
        FreeFormConstraint(tok, H, W, think=False).replay(turned)


@pytest.mark.parametrize("think", [False, True])
def test_a_transposed_generation_replays_as_the_sampler_walks_it(tok, grid, think):
    con = FreeFormConstraint(tok, H, W, think, transpose=True, max_new_tokens=200)
    reasoning = "Rows 1-4 keep." if think else None
    turned, same = build_target(tok, grid.T, reasoning), build_target(tok, grid, reasoning)
    rows, img, r, c = con.replay_batch([turned, same])  # one batch, two shapes
    for b, ids in enumerate((turned, same)):
        s, walked, feats = con.start(), [], []
        for t in ids:
            walked.append(con.mask_row(s))
            feats.append(con.features(s))
            done = con.advance(s, t)
        assert done and s.transposed == (b == 0)
        n = len(ids)
        assert rows[b, :n].tolist() == walked
        assert torch.stack([img[b, :n], r[b, :n], c[b, :n]], 1).tolist() == [list(f) for f in feats]
        # the grid features are those of the finished sequence (what training and the prompt compute)
        prompt = build_prompt(tok, grid, INSTR, think)
        pos = grid_positions(tok, prompt + ids)
        assert [p[len(prompt):].tolist() for p in pos] == [img[b, :n].tolist(), r[b, :n].tolist(), c[b, :n].tolist()]
    assert int(r[0].max()) == W - 1 and int(c[0].max()) == H  # W rows of H codes (+ EOL column)
    # the header choice is a choice: its token counts for training
    k = turned.index(con.choice_tokens[1]) if not think else None
    chosen = con.chosen(rows[0, : len(turned)])
    if k is not None:
        assert bool(chosen[k]) and rows[0, k] == con.choice_row
    assert int(chosen.sum()) == int((rows[0, : len(turned)] <= 1).sum()) + 1
    _, g = parse_generation(tok, turned, expect_hw=(H, W), transpose=True)
    np.testing.assert_array_equal(g, grid.T)
    with pytest.raises(ValueError, match=f"expected {H}\\*{W}$"):
        parse_generation(tok, turned, expect_hw=(H, W))
    with pytest.raises(ValueError, match="before EOS"):
        con.replay(turned[:-1])
    with pytest.raises(ValueError, match="after EOS"):
        con.replay(turned + [turned[-1]])


def test_square_grids_have_one_header(tok):
    assert constraint_for(tok, 4, 4, False, transpose=True) is constraint_for(tok, 4, 4, False)
    con = FreeFormConstraint(tok, 4, 4, False, transpose=True)
    assert con.shapes == ((4, 4),) and CHOICE not in con.template and con.choice_row == -1


def test_prefix_allowed_tokens_fn_follows_the_branch(tok, grid):
    sp = special_ids(tok)
    con = FreeFormConstraint(tok, H, W, think=False, transpose=True)
    fn = con.prefix_allowed_tokens_fn(prompt_len=1)
    turned = build_target(tok, grid.T, None)
    for i in range(len(turned)):
        assert turned[i] in fn(0, torch.tensor([sp.bos] + turned[:i])).tolist()
    assert fn(0, torch.tensor([sp.bos] + turned)).tolist() == [sp.pad]
    assert VIS in con.template


# -- sampling with the tiny random model -------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle():
    return make_tiny_random_bundle(seed=4)


@pytest.fixture(scope="module")
def landscape():
    return np.random.RandomState(1).randint(0, 64, (4, 5))


def _shapes(bundle, gens):
    return [parse_generation(bundle.tokenizer, g.tokens, expect_hw=(4, 5), transpose=True)[1].shape for g in gens]


def test_a_batch_may_mix_shapes_and_speculation_changes_nothing(bundle, landscape):
    prompt = build_prompt(bundle.tokenizer, landscape, INSTR, False)
    seeds = list(range(8))
    plain = sample_all(bundle, [prompt] * 8, 4, 5, seeds, transpose=True)
    shapes = _shapes(bundle, plain)
    assert (4, 5) in shapes and (5, 4) in shapes  # this random model picks either
    spec = sample_all(bundle, [prompt] * 8, 4, 5, seeds, transpose=True, speculate=4)
    assert [g.tokens for g in spec] == [g.tokens for g in plain]
    np.testing.assert_allclose([g.logprobs for g in spec][0], plain[0].logprobs, atol=1e-4)
    # training's log-probs (the replayed constraint) are the sampler's, the header choice included
    lp = sequence_logprobs(bundle, [prompt] * 8, [g.tokens for g in plain], 4, 5, False, transpose=True)
    for b, g in enumerate(plain):
        np.testing.assert_allclose(lp[b, : len(g.tokens)].tolist(), g.logprobs, atol=1e-4)
        con = constraint_for(bundle.tokenizer, 4, 5, False, transpose=True)
        assert g.logprobs[con.choice_pos] < 0  # a real choice, not a forced token
    # without the flag every candidate keeps the source's shape
    assert set(_shapes(bundle, sample_all(bundle, [prompt] * 8, 4, 5, seeds))) == {(4, 5)}


def test_a_forced_transposed_header_gives_a_turned_grid(bundle, landscape):
    sp = special_ids(bundle.tokenizer)
    prompt = build_prompt(bundle.tokenizer, landscape, INSTR, True)
    con = constraint_for(bundle.tokenizer, 4, 5, True, transpose=True)
    head = list(sp.think_end_ids) + [sp.img_start]
    head += sp.header_ids(5, 4)[: con.choice_pos - len(head) + 1]  # up to the choice, the "5" of "5*4"
    assert head[-1] == con.choice_tokens[1]
    gens = sample_all(bundle, [prompt] * 3, 4, 5, [0, 1, 2], think=True, transpose=True, forced_prefix=[head] * 3)
    assert _shapes(bundle, gens) == [(5, 4)] * 3


def test_generate_and_edit_return_portrait_candidates(bundle):
    from engine.api import edit_blocking
    from engine.generate import generate

    src = np.random.RandomState(2).randint(0, 64, (4, 5))
    edits = generate(bundle, [src] * 6, [INSTR] * 6, list(range(6)), transpose=True)
    shapes = {e.grid.shape for e in edits}
    assert shapes == {(4, 5), (5, 4)}
    for e in edits:
        assert e.image.size == (e.grid.shape[1] * 8, e.grid.shape[0] * 8)
    assert {e.grid.shape for e in generate(bundle, [src] * 6, [INSTR] * 6, list(range(6)))} == {(4, 5)}

    photo = Image.fromarray(np.random.RandomState(3).randint(0, 256, (120, 160, 3), dtype=np.uint8))
    done = edit_blocking(bundle, photo, INSTR, n=6, seed=0, transpose=True, understand=False)
    portrait = [d for d in done if d.grid.shape[0] > d.grid.shape[1]]
    assert portrait and len(portrait) < len(done)
    for d in done:
        assert d.image.size == (d.grid.shape[1] * 8, d.grid.shape[0] * 8)
        tall = d.grid.shape[0] > d.grid.shape[1]
        assert d.full is not None and (d.full.height > d.full.width) == tall
