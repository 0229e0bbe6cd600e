"""EARL Studio engine: bundles, tokenizers, the sequence layout, the sampler and its events.

The engine imports neither the studio nor training. ``engine.edit`` / ``engine.edit_blocking`` are
imported lazily so that ``import engine.tokens`` stays light.
"""

from typing import Any

__all__ = ["edit", "edit_blocking", "sample", "sample_all", "sequence_logprobs", "embed_inputs"]

_LAZY = {
    "edit": "engine.api",
    "edit_blocking": "engine.api",
    "sample": "engine.sampler",
    "sample_all": "engine.sampler",
    "sequence_logprobs": "engine.logprobs",
    "embed_inputs": "engine.logprobs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
