"""engine.text_tokenizer: structural + visual tokens as single ids, text round trips, save/load."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from engine import tokens as T
from engine.text_tokenizer import build_nano_tokenizer, token_id, visual_id_range

TEXTS = [
    "Make the photo grayscale.",
    "Flip the image horizontally.",
    "Turn the picture upside down, please.",
    T.COT_OPENER + "The whole image changes; nothing moves.",
]


@pytest.fixture(scope="module")
def tok():
    return build_nano_tokenizer(TEXTS, codebook_size=512, text_vocab_size=400)


def test_structural_tokens_are_single_special_ids(tok):
    ids = [tok.convert_tokens_to_ids(n) for n in T.STRUCTURAL]
    assert ids == list(range(len(T.STRUCTURAL)))  # first ids, in engine.tokens order
    for name, tid in zip(T.STRUCTURAL, ids, strict=True):
        assert tok.encode(name, add_special_tokens=False) == [tid]
    assert tok.bos_token == T.BOS and tok.eos_token == T.EOS and tok.pad_token == T.PAD
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == tuple(
        tok.convert_tokens_to_ids(n) for n in (T.BOS, T.EOS, T.PAD))
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)  # no implicit BOS/EOS
    assert token_id(tok, T.THINK_START) == tok.convert_tokens_to_ids(T.THINK_START)
    assert token_id(tok, "<|no such token|>") is None


def test_visual_tokens_are_a_contiguous_slice(tok):
    first, stop = visual_id_range(tok)
    assert stop - first == 512 and stop == len(tok)
    assert [tok.convert_tokens_to_ids(T.visual_token_name(i)) for i in (0, 1, 511)] == [first, first + 1, stop - 1]
    assert tok.encode(T.visual_token_name(7) + T.visual_token_name(8), add_special_tokens=False) == [first + 7,
                                                                                                       first + 8]
    # Text ids never reach into the visual range.
    text_ids = tok.encode(" ".join(TEXTS) + " qz!? 0123456789", add_special_tokens=False)
    assert max(text_ids) < first


@pytest.mark.parametrize("text", [
    "Make the photo grayscale.",
    "  leading and  double  spaces ",
    T.COT_OPENER + "box rows 3-7, cols 10-12; keep the rest.",
    "unseen words: zebra quokka, ünïcödé ✓ 中文",
    "line\nbreaks\tand tabs",
])
def test_text_round_trips(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("h, w", [(16, 16), (8, 32), (1, 1), (123, 4567)])
def test_grid_header_is_plain_text(tok, h, w):
    header = f"{h}*{w}"
    ids = tok.encode(T.IMG_START + header + T.IMG_TOKEN, add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids(T.IMG_START)
    assert ids[-1] == tok.convert_tokens_to_ids(T.IMG_TOKEN)
    assert tok.decode(ids[1:-1]) == header
    assert len(ids) == len(header) + 2  # digits split: one token per character, whatever H and W
    assert max(ids[1:-1]) < len(T.STRUCTURAL) + 400  # text ids, not special ones


def test_mixed_sequence_decodes_to_text_when_skipping_specials(tok):
    seq = T.BOS + "Flip it." + T.THINK_START + " ok" + T.THINK_END + T.visual_token_name(3) + T.EOL
    ids = tok.encode(seq, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "Flip it. ok"
    assert tok.decode(ids) == seq


def test_save_and_autotokenizer_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert len(again) == len(tok)
    sample = T.BOS + T.IMG_START + "16*16" + T.IMG_TOKEN + T.visual_token_name(100) + T.EOL + " Make it red."
    assert again.encode(sample, add_special_tokens=False) == tok.encode(sample, add_special_tokens=False)
    assert again.bos_token_id == tok.bos_token_id and again.pad_token_id == tok.pad_token_id
    assert visual_id_range(again) == visual_id_range(tok)


def test_bad_arguments():
    with pytest.raises(ValueError):
        build_nano_tokenizer(TEXTS, codebook_size=0)
    with pytest.raises(ValueError):
        build_nano_tokenizer(TEXTS, codebook_size=8, text_vocab_size=100)


def test_deterministic():
    a = build_nano_tokenizer(TEXTS, 16, 300)
    b = build_nano_tokenizer(TEXTS, 16, 300)
    assert a.get_vocab() == b.get_vocab()
