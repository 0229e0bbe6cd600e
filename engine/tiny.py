"""Tiny random EARL-nano bundles: a few hundred thousand parameters, deterministic in a seed.

Tests, benchmarks and the studio's ``--tiny-demo`` run the whole pipeline on them in seconds; their
output is noise, so they show that things run, not that they edit well.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Emu3ForCausalLM, Emu3TextConfig

from engine import tokens as T
from engine.bundle import Bundle, BundleConfig, save_bundle
from engine.grid_embed import GridEmbedding
from engine.vq import NanoVQ

# A handful of instruction strings for tiny test tokenizers (real bundles train on the editing suite).
TINY_TEXTS = [
    "Make the photo grayscale.",
    "Flip the image horizontally.",
    "Turn the picture upside down.",
    "Invert the colours of the photo.",
    "Keep the image unchanged.",
    "Add a red ball in the top left corner.",
    "Remove the blue square.",
    T.COT_OPENER + "The edit changes the whole image; the layout stays the same.",
    "0 1 2 3 4 5 6 7 8 9 16*16 32*32 8*8 rows 1-4, cols 2-6",
]


def tiny_lm_config(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                   intermediate: int | None = None, max_positions: int = 4096) -> Emu3TextConfig:
    """An Emu3TextConfig sized for ``tokenizer``, with settings that keep it fast (sdpa attention, untied head)."""
    return Emu3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        attention_dropout=0.0,
        # The default pad id (151643) is out of range for a small vocabulary and crashes embedding.
        pad_token_id=tokenizer.convert_tokens_to_ids(T.PAD),
        bos_token_id=tokenizer.convert_tokens_to_ids(T.BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(T.EOS),
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def make_tiny_random_bundle(
    path: str | Path | None = None,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    fsq_levels: tuple[int, ...] = (4, 4, 4),
    vq_channels: tuple[int, ...] = (16, 32, 32),
    grid_embed: bool = True,
    centred_freqs: int = 0,
    image_area: int = 64 * 64,
    texts: list[str] | None = None,
    text_vocab_size: int = 400,
    name: str = "tiny-random",
) -> Bundle:
    """A tiny random EARL-nano bundle (a few hundred K parameters) for tests; saved when ``path`` is given.

    Deterministic in ``seed``; the global torch RNG state is left untouched.
    """
    from engine.text_tokenizer import build_nano_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vq = NanoVQ(block_out_channels=tuple(vq_channels), fsq_levels=tuple(fsq_levels),
                    norm_num_groups=min(8, min(vq_channels)))
        vq.eval()
        tokenizer = build_nano_tokenizer(texts or TINY_TEXTS, vq.codebook_size, text_vocab_size)
        lm = Emu3ForCausalLM(tiny_lm_config(tokenizer, hidden, layers, heads, kv_heads))
        lm.eval()
        ge = GridEmbedding(hidden, centred_freqs=centred_freqs).eval() if grid_embed else None
    # Round the random weights to bf16-representable values: a bf16 save -> load round trip is then
    # exact, and the in-memory bundle computes the same logits as the one loaded from disk.
    for module in (lm, ge):
        if module is not None:
            with torch.no_grad():
                for p in module.parameters():
                    p.copy_(p.to(torch.bfloat16).float())
    cfg = BundleConfig(
        family="earl-nano", name=name, version="0", image_area=image_area,
        spatial_factor=vq.spatial_factor, codebook_size=vq.codebook_size,
        notes={"tiny_random": True, "seed": seed},
    )
    bundle = Bundle(config=cfg, lm=lm, tokenizer=tokenizer, vq=vq, grid_embed=ge, path=None)
    if path is not None:
        bundle.path = save_bundle(bundle, path)
    return bundle
