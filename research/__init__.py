"""Experiments and probes: not used by the product. Their findings: research/LOG.md."""
