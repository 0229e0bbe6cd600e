"""The EARL-nano recipe (see README.md here): tokenizer distillation, LM remapping, GPU SFT, merging."""
