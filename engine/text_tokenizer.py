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
