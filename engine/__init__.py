"""EARL Studio engine: bundles, tokenizers, the sequence layout, the sampler and its events.

The engine imports neither the studio nor training.
"""
