"""EARL-nano's text tokenizer: byte-level BPE for text + structural tokens + one token per VQ code.

Id layout (so the visual ids form one contiguous slice, cheap to mask in the sampler):

    0 .. len(STRUCTURAL)-1            the structural tokens of ``engine.tokens`` (single special tokens)
    .. text vocab end                  byte-level BPE (all 256 bytes are in the alphabet, so any text is
                                       encodable; digits are split one per token, so "H*W" headers are
                                       one token per character for any H, W)
    text vocab end .. + codebook_size  ``visual_token_name(i)`` for i in range(codebook_size)

The engine only ever looks ids up by name (``convert_tokens_to_ids``), so a real Emu3 tokenizer, where
these names are ordinary added tokens at other ids, works the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from engine.tokens import BOS, EOS, PAD, STRUCTURAL, visual_token_name


def build_nano_tokenizer(
    texts: Iterable[str], codebook_size: int, text_vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and add the structural and visual tokens.

    ``text_vocab_size`` counts the structural tokens and the 256-byte alphabet; a small corpus may
    yield fewer merges, so the real text vocabulary can be smaller (never larger).
    """
    if codebook_size <= 0:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}")
    min_size = len(STRUCTURAL) + 256
    if text_vocab_size < min_size:
        raise ValueError(f"text_vocab_size must be at least {min_size} (structural tokens + 256 bytes)")
    texts = list(texts)

    tok = Tokenizer(models.BPE())
    # Digits one per token, as in Emu3's (Qwen) pre-tokenizer: an "H*W" header is always one token per
    # character, and numbers in reasoning text (grid boxes) are compositional.
    # add_prefix_space=False: decode(encode(s)) == s exactly, leading spaces included.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=text_vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in STRUCTURAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    # Visual tokens: added after training, so their ids are contiguous right after the text vocab.
    # Marked special so decode(skip_special_tokens=True) of a mixed sequence yields just the text.
    first = tok.get_vocab_size()
    visual = [AddedToken(visual_token_name(i), special=True, normalized=False) for i in range(codebook_size)]
    tok.add_special_tokens(visual)
    assert tok.token_to_id(visual_token_name(0)) == first
    assert tok.token_to_id(visual_token_name(codebook_size - 1)) == first + codebook_size - 1

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )


def token_id(tokenizer, name: str) -> int | None:
    """Id of the single token ``name``, or None when the vocabulary has no such token.

    Don't test ``convert_tokens_to_ids(name) == unk_token_id``: Emu3's tokenizers (GPT2Tokenizer) use
    ``<|endoftext|>`` — our PAD — as unk token, so an unknown name silently maps to the PAD id. EARL's
    think markers are such names: plain text in Emu3's vocabulary.
    """
    tid = tokenizer.convert_tokens_to_ids(name)
    if tid is None or tokenizer.convert_ids_to_tokens(tid) != name:
        return None
    return int(tid)


def visual_id_range(tokenizer) -> tuple[int, int]:
    """(first, stop) ids of the visual tokens when they are contiguous (nano tokenizers); else ValueError."""
    ids = []
    while (tid := token_id(tokenizer, visual_token_name(len(ids)))) is not None:
        ids.append(tid)
    if not ids:
        raise ValueError("tokenizer has no visual tokens")
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ValueError("visual token ids are not contiguous")
    return ids[0], ids[0] + len(ids)


# -- Emu3's original tokenizer files -> a transformers tokenizer (no remote code, no tiktoken) ---------

EMU3_TIKTOKEN_FILE = "emu3.tiktoken"
EMU3_VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
EMU3_SPECIAL_START_ID = 151643  # fixed in baaivision/Emu3 emu3/mllm/tokenization_emu3.py
# Qwen's pre-tokenizer regex, which Emu3Tokenizer hands to tiktoken (after NFC normalisation).
QWEN_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """The pieces tiktoken's BPE holds for ``token`` just before merging it (merges ranked < max_rank)."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def convert_emu3_tiktoken(src_dir, out_dir, special_start_id: int | None = None) -> None:
    """Write a transformers tokenizer (tokenizer.json + config) equivalent to BAAI's Emu3Tokenizer.

    ``src_dir`` holds ``emu3.tiktoken`` (base64 token, rank per line) and ``emu3_vision_tokens.txt``,
    as in BAAI/Emu3-Gen, -Chat, -Stage1. Ids are kept: BPE ranks are the ids of text tokens; specials
    start right after them — 151643 for Emu3's file, the constant Emu3Tokenizer uses (its own check
    ``len(ranks) + len(specials) == n_vocab`` makes the two equal) — in Emu3Tokenizer's order (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``,
    ``<|extra_0..204|>``, then the vision-token file's lines). Pre-tokenizer: Qwen's regex after NFC,
    as Emu3Tokenizer does; merges are recovered from the ranks the way tiktoken applies them.
    """
    import base64
    import json
    from pathlib import Path

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    src, out = Path(src_dir), Path(out_dir)
    ranks: dict[bytes, int] = {}
    for line in (src / EMU3_TIKTOKEN_FILE).read_bytes().splitlines():
        if line.strip():
            tok_b64, rank = line.split()
            ranks[base64.b64decode(tok_b64)] = int(rank)
    vision = [t.strip() for t in (src / EMU3_VISION_TOKENS_FILE).read_text(encoding="utf-8").splitlines() if t.strip()]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)] + vision
    if special_start_id is None:
        special_start_id = len(ranks)
    if sorted(ranks.values()) != list(range(special_start_id)):
        # Emu3's file has ranks 0..151642 exactly; with gaps the ids could not be kept.
        raise ValueError(f"{src / EMU3_TIKTOKEN_FILE}: ranks are not exactly 0..{special_start_id - 1}")

    byte_map = bytes_to_unicode()

    def as_text(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {as_text(t): r for t, r in ranks.items()}
    merges = []
    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(t) > 1:
            parts = _bpe_parts(ranks, t, r)
            if len(parts) != 2:
                raise ValueError(f"token {t!r} (rank {r}) is not reachable by one merge")
            merges.append([as_text(parts[0]), as_text(parts[1])])
    added = [{"id": special_start_id + i, "content": s, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(specials)]
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PAT_STR}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        # ignore_merges: like tiktoken, a piece that is itself a token is taken whole.
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "TokenizersBackend", "backend": "tokenizers", "bos_token": BOS, "eos_token": EOS,
        "pad_token": PAD, "clean_up_tokenization_spaces": False, "model_max_length": 1 << 20,
    }, indent=2))
