"""Sequence layout and constraint: round trips, malformed sequences, grid features, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import tokens as T
from engine.constraint import TEXT_ROW, VISUAL_ROW, FreeFormConstraint
from engine.layout import (
    SpecialIds,
    build_prompt,
    build_target,
    grid_positions,
    grid_positions_batch,
    parse_generation,
)
from engine.text_tokenizer import build_nano_tokenizer
from engine.tiny import TINY_TEXTS


@pytest.fixture(scope="module")
def tok():
    return build_nano_tokenizer(TINY_TEXTS, codebook_size=64, text_vocab_size=400)


@pytest.fixture(scope="module")
def grid():
    return np.random.RandomState(1).randint(0, 64, (3, 5))


def test_special_ids(tok):
    sp = SpecialIds.from_tokenizer(tok)
    assert sp.bos == tok.convert_tokens_to_ids(T.BOS)
    assert sp.codebook_size == 64
    assert sp.visual_ids[7] == tok.convert_tokens_to_ids(T.visual_token_name(7))
    assert sp.code_of[sp.visual_ids[7]] == 7 and sp.code_of[sp.bos] == -1
    assert tok.decode(sp.header_ids(16, 16)) == "16*16"
    assert SpecialIds.from_tokenizer(tok) is sp  # cached per tokenizer


def test_missing_tokens_are_named():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    with pytest.raises(ValueError, match="lacks the Emu3 tokens"):
        SpecialIds.from_tokenizer(bare)


@pytest.mark.parametrize("reasoning", [None, "", "Flip it: rows 1-4 stay."])
def test_round_trip(tok, grid, reasoning):
    sp = SpecialIds.from_tokenizer(tok)
    target = build_target(tok, grid, reasoning)
    text, g = parse_generation(tok, target + [sp.pad, sp.pad], expect_hw=grid.shape)
    assert text == (reasoning or "")
    np.testing.assert_array_equal(g, grid)


def test_prompt_layout(tok, grid):
    sp = SpecialIds.from_tokenizer(tok)
    p = build_prompt(tok, grid, "  Make the photo grayscale. ", think=True)
    assert p[0] == sp.bos and p[1] == sp.img_start and p[-1] == sp.think_start
    n_img = 1 + len(sp.header_ids(3, 5)) + 1 + 3 * 6 + 2
    assert p[1 + n_img - 2 : 1 + n_img] == [sp.eof, sp.img_end]
    assert tok.decode(p[1 + n_img : -1]) == "Make the photo grayscale." + T.COT_OPENER
    no_think = build_prompt(tok, grid, "Make the photo grayscale.", think=False)
    assert tok.decode(no_think[1 + n_img :]) == "Make the photo grayscale."
    assert build_prompt(tok, None, "", think=False) == [sp.bos]


def _malformed(tok, grid):
    sp = SpecialIds.from_tokenizer(tok)
    good = build_target(tok, grid, None)
    hdr = len(sp.header_ids(3, 5))
    first_row = 2 + hdr  # index of the first visual token
    cases = {
        "no IMG_START": good[1:],
        "IMG_TOKEN": [x for x in good if x != sp.img_token],
        "header": [sp.img_start, *tok.encode("3x5", add_special_tokens=False)] + good[1 + hdr :],
        "visual tokens, header says 5": good[:first_row + 4] + good[first_row + 5 :],  # short row
        "does not end with EOL": good[:first_row + 5] + [sp.visual_ids[0].item()] + good[first_row + 6 :],
        "more than 3 rows": good[:-3] + good[first_row : first_row + 6] + good[-3:],
        "EOS": good[:-1],
        "follow EOS": good + [sp.bos],
        "THINK_END": tok.encode("thinking but no end", add_special_tokens=False) + good,
        "ends early": good[: first_row + 8],
    }
    return cases


@pytest.mark.parametrize("case", ["no IMG_START", "IMG_TOKEN", "header", "visual tokens, header says 5",
                                  "does not end with EOL", "more than 3 rows", "EOS", "follow EOS", "THINK_END",
                                  "ends early"])
def test_malformed_sequences_raise(tok, grid, case):
    ids = _malformed(tok, grid)[case]
    with pytest.raises(ValueError) as err:
        parse_generation(tok, ids)
    words = case.split(", ")[0].split()
    assert any(w.lower() in str(err.value).lower() for w in words), str(err.value)


def test_wrong_shape_rejected(tok, grid):
    with pytest.raises(ValueError, match="expected 5\\*3"):
        parse_generation(tok, build_target(tok, grid, None), expect_hw=(5, 3))


def test_grid_positions(tok, grid):
    sp = SpecialIds.from_tokenizer(tok)
    p = build_prompt(tok, grid, "Flip the image horizontally.", think=False)
    t = build_target(tok, grid[::-1], None)
    seq = p + t
    image, row, col = grid_positions(tok, seq)
    ids = torch.tensor(seq)
    vis = sp.is_visual(ids)
    assert int((image == 1).sum()) == 3 * 6 and int((image == 2).sum()) == 3 * 6
    assert bool((image[vis] > 0).all()) and bool((image[~vis & (ids != sp.eol)] == 0).all())
    eol = ids == sp.eol
    assert col[eol].tolist() == [5] * 6 and row[eol].tolist() == [0, 1, 2] * 2
    src = (image == 1) & vis
    assert row[src].tolist() == [r for r in range(3) for _ in range(5)]
    assert col[src].tolist() == list(range(5)) * 3
    # prefix-stable: features of a prefix never change when more tokens follow
    pi, pr, pc = grid_positions(tok, seq[:40])
    assert torch.equal(pi, image[:40]) and torch.equal(pc, col[:40])


def _grid_positions_loop(sp: SpecialIds, seq: list[int]):
    """The token-by-token definition that the vectorised ``grid_positions_batch`` must equal."""
    n = len(seq)
    image, row, col = [0] * n, [0] * n, [0] * n
    k, inside, r, c = 0, False, 0, 0
    for i, t in enumerate(seq):
        if t == sp.img_start:
            k += 1
            inside = False
        elif t == sp.img_token and k > 0:
            inside, r, c = True, 0, 0
        elif inside:
            if t == sp.eol:
                image[i], row[i], col[i] = k, r, c
                r, c = r + 1, 0
            elif t in sp.visual_set:
                image[i], row[i], col[i] = k, r, c
                c += 1
            else:
                inside = False
    return image, row, col


def test_grid_positions_batch_equals_the_token_loop(tok, grid):
    sp = SpecialIds.from_tokenizer(tok)
    rng = np.random.RandomState(0)
    p = build_prompt(tok, grid, "Flip the image horizontally.", think=True)
    t = build_target(tok, grid[::-1], "Rows 1-4 keep.")
    seqs = [p + t, p, t, build_prompt(tok, None, "Add a ball.", think=False) + t]
    # malformed streams too: the features are defined for any token sequence (prefixes, stray markers)
    alphabet = [sp.img_start, sp.img_token, sp.eol, sp.eof, sp.bos, *sp.visual_ids[:4].tolist(), 7, 9]
    seqs += [rng.choice(alphabet, size=rng.randint(1, 60)).tolist() for _ in range(40)]
    seqs += [(p + t)[: rng.randint(1, len(p + t))] for _ in range(10)]
    longest = max(map(len, seqs))
    batch = torch.full((len(seqs), longest), sp.pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(s)
    image, row, col = grid_positions_batch(tok, batch)
    for i, s in enumerate(seqs):
        want = _grid_positions_loop(sp, s)
        got = (image[i, : len(s)].tolist(), row[i, : len(s)].tolist(), col[i, : len(s)].tolist())
        assert got == want, (i, s)
        assert not image[i, len(s):].any()


def test_replay_batch_equals_replay_per_sequence(tok, grid):
    con = FreeFormConstraint(tok, 3, 5, think=True)
    gens = [build_target(tok, grid, r) for r in ("Rows 1-4 keep.", "", "Make the whole picture much brighter")]
    batch = con.replay_batch(gens)
    for i, g in enumerate(gens):
        for a, b in zip(batch, con.replay(g), strict=True):
            assert torch.equal(a[i, : len(g)], b) and not a[i, len(g):].any()
    bad = [list(g) for g in gens]
    bad[2][-5] = tok.encode("Make", add_special_tokens=False)[0]
    with pytest.raises(ValueError, match="not allowed by the constraint \\(sequence 2\\)"):
        con.replay_batch(bad)


@pytest.mark.parametrize("think", [False, True])
def test_constraint_replay_matches_layout(tok, grid, think):
    sp = SpecialIds.from_tokenizer(tok)
    reasoning = "Rows 1-4 keep." if think else None
    prompt = build_prompt(tok, grid, "Keep the image unchanged.", think)
    target = build_target(tok, grid, reasoning)
    con = FreeFormConstraint(tok, 3, 5, think, max_new_tokens=len(target) + 10)
    rows, image, row, col = con.replay(target)
    gi, gr, gc = grid_positions(tok, prompt + target)
    n = len(prompt)
    assert torch.equal(image, gi[n:]) and torch.equal(row, gr[n:]) and torch.equal(col, gc[n:])
    vis = sp.is_visual(torch.tensor(target))
    assert bool((rows[vis] == VISUAL_ROW).all())
    if think:
        n_text = len(tok.encode(reasoning, add_special_tokens=False))
        assert bool((rows[: n_text + 1] == TEXT_ROW).all())  # THINK_END is sampled as text
    masks = con.additive_masks(target)
    assert masks.shape == (len(target), len(tok))
    assert bool(masks.gather(1, torch.tensor(target)[:, None]).eq(0).all())
    # the text mask excludes visual and structural tokens
    assert torch.isinf(con.masks[TEXT_ROW, sp.visual_ids]).all()
    assert torch.isinf(con.masks[TEXT_ROW, [sp.img_start, sp.eos, sp.eol]]).all()


def test_constraint_rejects_disallowed_tokens(tok, grid):
    sp = SpecialIds.from_tokenizer(tok)
    con = FreeFormConstraint(tok, 3, 5, think=False)
    bad = build_target(tok, grid, None)
    bad[10] = sp.bos
    with pytest.raises(ValueError, match="not allowed"):
        con.replay(bad)
    with pytest.raises(ValueError, match="before EOS"):
        con.replay(build_target(tok, grid, None)[:-1])
    with pytest.raises(ValueError, match="too small"):
        FreeFormConstraint(tok, 3, 5, think=False, max_new_tokens=5)
    # allows() answers the same question for one token
    vis = sp.visual_ids[0]
    assert con.allows(VISUAL_ROW, vis) and not con.allows(VISUAL_ROW, sp.bos)
    assert not con.allows(TEXT_ROW, vis) and not con.allows(VISUAL_ROW, -1)
    assert not con.allows(VISUAL_ROW, con.vocab_size)


def test_reasoning_budget_forces_think_end(tok, grid):
    sp = SpecialIds.from_tokenizer(tok)
    con = FreeFormConstraint(tok, 3, 5, think=True, max_new_tokens=None)
    image_len = con.image_len
    con = FreeFormConstraint(tok, 3, 5, think=True, max_new_tokens=image_len + 1 + 4)
    assert con.max_reasoning == 4
    s = con.start()
    some_text = tok.encode("Make the", add_special_tokens=False)[0]
    for _ in range(4):
        assert con.forced(s) is None and con.mask_row(s) == TEXT_ROW
        con.advance(s, some_text)
    assert con.forced(s) == sp.think_end
    con.advance(s, sp.think_end)
    assert con.forced(s) == sp.img_start


def _replay_token_by_token(con: FreeFormConstraint, ids: list[int]):
    """The sampler's state machine, one token at a time: what ``replay`` must equal."""
    s, rows, feats, done = con.start(), [], [], False
    for t in ids:
        assert not done
        rows.append(con.mask_row(s))
        feats.append(con.features(s))
        done = con.advance(s, t)
    assert done
    f = torch.tensor(feats).reshape(-1, 3)
    return torch.tensor(rows), f[:, 0], f[:, 1], f[:, 2]


@pytest.mark.parametrize("think,reasoning,budget", [
    (False, None, None), (True, "Rows 1-4 keep.", None), (True, "", None),
    (True, "Make the whole picture much brighter please", 4),  # budget spent: THINK_END forced mid-text
])
def test_replay_equals_the_state_machine(tok, grid, think, reasoning, budget):
    target = build_target(tok, grid, reasoning)
    if budget is not None:  # what a sampler would have produced: 4 free tokens, then forced THINK_END
        text = tok.encode(reasoning, add_special_tokens=False)[:budget]
        target = text + build_target(tok, grid, "")  # empty reasoning: THINK_END + the image
        image_len = FreeFormConstraint(tok, 3, 5, think=True).image_len
        con = FreeFormConstraint(tok, 3, 5, think, max_new_tokens=image_len + 1 + budget)
    else:
        con = FreeFormConstraint(tok, 3, 5, think, max_new_tokens=len(target) + 10)
    fast, slow = con.replay(target), _replay_token_by_token(con, target)
    for a, b in zip(fast, slow, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=f"after EOS at position {len(target)}"):
        con.replay(target + [target[-1]])
    with pytest.raises(ValueError, match="before EOS"):
        con.replay(target[:-3])


def test_prefix_allowed_tokens_fn(tok, grid):
    sp = SpecialIds.from_tokenizer(tok)
    con = FreeFormConstraint(tok, 3, 5, think=False)
    fn = con.prefix_allowed_tokens_fn(prompt_len=2)
    target = build_target(tok, grid, None)
    for i in range(len(target)):
        allowed = fn(0, torch.tensor([sp.bos, sp.bos] + target[:i]))
        assert target[i] in allowed.tolist()
        if con.template[i] != -1:
            assert allowed.tolist() == [target[i]]
        else:
            assert len(allowed) == 64
    assert fn(0, torch.tensor([sp.bos, sp.bos] + target)).tolist() == [sp.pad]


def emu3_like_tokenizer():
    """Like Emu3's: the think markers are plain text (several BPE tokens each), not special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = [t for t in T.STRUCTURAL if t not in (T.THINK_START, T.THINK_END)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(TINY_TEXTS, trainer=trainer)
    bpe.add_special_tokens([AddedToken(T.visual_token_name(i), special=True, normalized=False) for i in range(64)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=T.BOS, eos_token=T.EOS, pad_token=T.PAD)


def test_multi_token_think_markers(grid):
    tok = emu3_like_tokenizer()
    sp = SpecialIds.from_tokenizer(tok)
    assert len(sp.think_end_ids) > 1 and len(sp.think_start_ids) > 1
    with pytest.raises(ValueError, match="several tokens"):
        _ = sp.think_end
    reasoning = "Rows 1-4 keep."
    target = build_target(tok, grid, reasoning)
    text, g = parse_generation(tok, target)
    assert text == reasoning
    np.testing.assert_array_equal(g, grid)
    con = FreeFormConstraint(tok, 3, 5, think=True, max_new_tokens=len(target) + 20)
    rows = con.replay(target)[0]
    n = len(tok.encode(reasoning, add_special_tokens=False)) + len(sp.think_end_ids)
    assert bool((rows[:n] == TEXT_ROW).all())  # the marker's pieces are ordinary text tokens
    # budget: THINK_END's pieces are forced one by one
    con = FreeFormConstraint(tok, 3, 5, think=True, max_new_tokens=con.image_len + len(sp.think_end_ids) + 2)
    s = con.start()
    for _ in range(2):
        con.advance(s, tok.encode("Make", add_special_tokens=False)[0])
    for t in sp.think_end_ids:
        assert con.forced(s) == t
        con.advance(s, t)
    assert con.forced(s) == sp.img_start
    # a marker begun when the budget runs out is continued, not restarted
    end = list(sp.think_end_ids)
    con = FreeFormConstraint(tok, 3, 5, think=True, max_new_tokens=con.image_len + len(end) + 3)
    s = con.start()
    for t in [tok.encode("Make", add_special_tokens=False)[0]] + end[:2]:
        con.advance(s, t)
    assert [con.forced(s)] == end[2:3]
    seq = [tok.encode("Make", add_special_tokens=False)[0]] + end + build_target(tok, grid, None)
    assert con.replay(seq)[0].shape == (len(seq),)
    assert parse_generation(tok, seq)[0] == "Make"


def test_constraint_for_shares_one_constraint_per_request_shape(tok):
    from engine.constraint import _CACHE_PER_TOKENIZER, constraint_for

    a = constraint_for(tok, 3, 4, True, max_new_tokens=64)
    assert constraint_for(tok, 3, 4, True, max_new_tokens=64) is a
    assert (a.h, a.w, a.think, a.max_new_tokens) == (3, 4, True, 64)
    others = [constraint_for(tok, 3, 4, False), constraint_for(tok, 4, 3, True, max_new_tokens=64),
              constraint_for(tok, 3, 4, True, max_new_tokens=80), constraint_for(tok, 3, 4, True, len(tok) + 8, 64)]
    assert len({id(c) for c in [a, *others]}) == 5
    assert others[3].masks.shape[1] == len(tok) + 8
    for w in range(1, _CACHE_PER_TOKENIZER + 1):  # the oldest ones give way to newer shapes
        constraint_for(tok, 1, w, False)
    assert constraint_for(tok, 3, 4, True, max_new_tokens=64) is not a
