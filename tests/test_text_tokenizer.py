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


# -- Emu3's original tiktoken tokenizer -> transformers, checked against tiktoken itself ---------------

EMU3_TEXTS = [
    "Make the sky purple and add a small red boat on the left.",
    "Let's think step by step. The boat sits at rows 12-15, cols 3-9; keep everything else.",
    "DON'T change the 256x256 photo!\n\nIt's fine.   Trailing   spaces   ",
    "Ünïcödé café naïve — 中文 日本語 😀 tabs\tand\r\nnewlines",
]


def _tiny_emu3_tiktoken(folder, codebook: int = 16):
    """emu3.tiktoken + emu3_vision_tokens.txt for a small BPE, in BAAI's file formats."""
    import base64
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(EMU3_TEXTS * 3, trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    merges = json.loads(hf.to_str())["model"]["merges"]
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {c: b for b, c in bytes_to_unicode().items()}

    def raw(s: str) -> bytes:
        return bytes(to_byte[c] for c in s)

    ranks = {bytes([b]): b for b in range(256)}
    for a, b in merges:  # rank = merge order, so tiktoken's rank-greedy BPE makes the same tokens
        ranks.setdefault(raw(a) + raw(b), len(ranks))
    folder.mkdir()
    (folder / "emu3.tiktoken").write_bytes(
        b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for t, r in ranks.items()))
    vision = [T.IMG_TOKEN, T.IMG_START, T.IMG_END] + [T.visual_token_name(i) for i in range(codebook)]
    (folder / "emu3_vision_tokens.txt").write_text("\n".join(vision) + "\n")
    return ranks, vision


def test_emu3_tiktoken_conversion_matches_tiktoken(tmp_path):
    import unicodedata

    tiktoken = pytest.importorskip("tiktoken")
    from engine.text_tokenizer import QWEN_PAT_STR, convert_emu3_tiktoken

    ranks, vision = _tiny_emu3_tiktoken(tmp_path / "src")
    start = len(ranks)  # Emu3: 151643 = len(its ranks); a small vocab keeps the same layout, shifted
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)] + vision
    special_ids = {s: start + i for i, s in enumerate(specials)}
    # Exactly how baaivision/Emu3's Emu3Tokenizer builds its encoder.
    ref = tiktoken.Encoding("Emu3", pat_str=QWEN_PAT_STR, mergeable_ranks=ranks, special_tokens=special_ids)

    convert_emu3_tiktoken(tmp_path / "src", tmp_path / "out")  # specials start after the ranks
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    # Emu3's layout (offsets from 151643): BOS +206 (151849), EOS +207, image token +208, image start
    # +209, EOL = <|extra_200|> +203 (151846, Emu3Config.eol_token_id), first visual token +211.
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (start + 206, start + 207, start)
    assert [tok.convert_tokens_to_ids(n) for n in (T.IMG_TOKEN, T.IMG_START, T.EOL)] == [
        start + 208, start + 209, start + 203]
    assert token_id(tok, T.visual_token_name(0)) == start + 211 and token_id(tok, T.THINK_START) is None
    assert len(tok) == start + len(specials)
    with pytest.raises(ValueError, match="ranks are not exactly"):
        convert_emu3_tiktoken(tmp_path / "src", tmp_path / "bad", special_start_id=151643)  # ids would shift
    texts = EMU3_TEXTS + [
        T.BOS + T.IMG_START + "32*32" + T.IMG_TOKEN + T.visual_token_name(3) + T.EOL + T.EOF + T.IMG_END,
        T.COT_OPENER + T.THINK_START + " the boat is small " + T.THINK_END,
        "cafe\u0301 decomposed accents", "x" * 50, "1234567890 9876", "",
    ]
    for text in texts:
        expected = ref.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert tok.encode(text, add_special_tokens=False) == expected, text
        assert tok.decode(expected) == unicodedata.normalize("NFC", text)
