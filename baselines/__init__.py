"""Reference servers to benchmark gpt2-serve against (not part of the installed package)."""
