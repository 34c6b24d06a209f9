"""`make compat`: guidellm, aiperf, inference-perf and litellm, unchanged, against a local server
(python -m scripts.compat; docs/compat.md)."""
