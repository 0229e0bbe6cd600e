"""Shared pytest fixtures. Keep this file small: one fixture per need, built lazily."""

from __future__ import annotations

import os

import pytest

# Tests see the same objects on every machine: the shipped stamps only, never a Debian Tux Paint package
# that a training run may have unpacked under data/cache (a path that is not a folder disables it).
os.environ["EARL_TUXPAINT_STAMPS"] = os.devnull


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny random EARL-nano bundle saved to a temp folder and loaded back (LM in float32, CPU).

    8x8 code grid at its 64x64 image area, 64 FSQ codes, hidden 64, 2 layers, with a grid embedding.
    Session-scoped: treat it as read-only (copy.deepcopy the LM before training it).
    """
    from engine.bundle import load_bundle
    from engine.tiny import make_tiny_random_bundle

    path = tmp_path_factory.mktemp("bundles") / "tiny"
    make_tiny_random_bundle(path, seed=0)
    return load_bundle(path)


@pytest.fixture
def forward_passes(monkeypatch):
    """A list that records the tokens per row of every forward pass of the sampler's static-cache runner
    (speculative decoding's tests compare pass counts)."""
    from engine.sampler import _FastRunner

    seen: list[int] = []
    orig = _FastRunner.forward

    def counting(self, emb, start, positions, attn_mask, all_positions=False):
        seen.append(emb.shape[1])
        return orig(self, emb, start, positions, attn_mask, all_positions)

    monkeypatch.setattr(_FastRunner, "forward", counting)
    return seen
