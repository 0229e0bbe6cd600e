"""Speculative decoding's guesses (engine.drafts): which guesser wins, and how many tokens a pass feeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.drafts import CopyDrafter, best_draft_length, code_permutations, draft_gain, source_grid
from engine.layout import build_prompt
from engine.vq import NanoVQ, apply_d4


@pytest.fixture(scope="module")
def eq_vq():
    return NanoVQ(block_out_channels=(8, 16, 16), fsq_levels=(3, 5, 5), norm_num_groups=8, equivariant=True)


def _emit(drafter: CopyDrafter, target: np.ndarray, upto: int) -> None:
    for i in range(upto):
        r, c = divmod(i, target.shape[1])
        drafter.guess(r, c)
        drafter.observe(r, c, int(target[r, c]))


def _guess_rest(drafter: CopyDrafter, target: np.ndarray, start: int) -> float:
    hits = []
    for i in range(start, target.size):
        r, c = divmod(i, target.shape[1])
        hits.append(drafter.guess(r, c) == target[r, c])
        drafter.observe(r, c, int(target[r, c]))
    return float(np.mean(hits))


def test_a_flip_is_guessed_through_the_tokenizers_code_permutation(eq_vq):
    perms = code_permutations(eq_vq)
    assert len(perms) == 8
    src = np.random.default_rng(0).integers(0, eq_vq.codebook_size, (6, 6))
    k, flip = 0, True
    target = perms[(k, flip)][apply_d4(torch.from_numpy(src), k, flip).numpy()]
    d = CopyDrafter(src, target.shape, perms)
    _emit(d, target, 6)  # one row is enough to tell the mirror from the other symmetries
    assert _guess_rest(d, target, 6) == 1.0
    # a plain copy is guessed by the identity from the start
    d = CopyDrafter(src, src.shape, perms)
    assert _guess_rest(d, src, 0) == 1.0


def test_a_quarter_turn_of_a_wide_grid_keeps_only_the_fitting_symmetries(eq_vq):
    perms = code_permutations(eq_vq)
    src = np.random.default_rng(1).integers(0, eq_vq.codebook_size, (4, 6))
    target = perms[(1, False)][apply_d4(torch.from_numpy(src), 1, False).numpy()]
    d = CopyDrafter(src, target.shape, perms)
    assert len(d.sym) == 4  # the turns by 90 and 270 degrees, with and without the mirror
    _emit(d, target, 4)
    assert _guess_rest(d, target, 4) == 1.0


def test_a_colour_map_and_repeated_cells_are_learnt_while_decoding():
    rng = np.random.default_rng(2)
    identity_only = {(0, False): None}
    src = rng.integers(0, 8, (8, 8))  # few codes: each comes back often
    recolour = rng.permutation(64)
    target = recolour[src]
    d = CopyDrafter(src, target.shape, identity_only)
    _emit(d, target, 16)
    assert _guess_rest(d, target, 16) > 0.9  # the map from guessed to emitted codes
    zoom = np.repeat(np.repeat(rng.integers(0, 64, (4, 4)), 2, 0), 2, 1)
    d = CopyDrafter(rng.integers(0, 64, (8, 8)), zoom.shape, identity_only)
    _emit(d, zoom, 16)
    assert _guess_rest(d, zoom, 16) >= 0.5  # the cell to the left / above
    # no symmetry fits: only the neighbour guessers remain
    d = CopyDrafter(src[:, :4], (8, 8), identity_only)
    assert not d.sym and d.guess(0, 0) is None


def test_draft_length_follows_the_share_of_right_guesses_and_the_batch():
    assert best_draft_length(0.05, rows=1, limit=16) == 1
    assert best_draft_length(0.95, rows=1, limit=16) == 16
    assert best_draft_length(0.95, rows=1, limit=4) == 4
    assert best_draft_length(0.95, rows=1, limit=0) == 1
    assert best_draft_length(0.8, rows=16, limit=16) < best_draft_length(0.8, rows=1, limit=16)
    assert draft_gain(1, 0.5, 1) == pytest.approx(1.0)


def test_source_grid_reads_the_prompts_image(tiny_bundle):
    grid = np.random.default_rng(3).integers(0, 64, (3, 4))
    prompt = build_prompt(tiny_bundle.tokenizer, grid, "Mirror it.", False)
    np.testing.assert_array_equal(source_grid(tiny_bundle.tokenizer, prompt), grid)
    assert source_grid(tiny_bundle.tokenizer, build_prompt(tiny_bundle.tokenizer, None, "x", False)) is None
