"""Training data: the photo corpus, the synthetic edit suite, pretokenized caches and live samples."""
