"""Special-token names shared by every model family.

EARL-nano deliberately reuses Emu3's token *names*, so one sequence builder and one parser serve real
Emu3/EARL checkpoints and our own small model alike. Ids are always looked up through the tokenizer.
"""

BOS = "<|extra_203|>"
EOS = "<|extra_204|>"
IMG_START = "<|image start|>"
IMG_END = "<|image end|>"
IMG_TOKEN = "<|image token|>"
EOL = "<|extra_200|>"
EOF = "<|extra_201|>"
PAD = "<|endoftext|>"
THINK_START = "<|start thinking|>"
THINK_END = "<|end thinking|>"

# Emu3 writes the CoT opener as plain text before the think marker (EARL's "CE" mode).
COT_OPENER = " Let's think step by step. "

VISUAL_TOKEN_FORMAT = "<|visual token {:06d}|>"


def visual_token_name(code: int) -> str:
    """Token name of VQ codebook entry ``code`` (zero-padded to six digits, as in Emu3)."""
    return VISUAL_TOKEN_FORMAT.format(code)


# Structural tokens that the nano tokenizer adds as single special tokens.
STRUCTURAL = [BOS, EOS, IMG_START, IMG_END, IMG_TOKEN, EOL, EOF, PAD, THINK_START, THINK_END]
