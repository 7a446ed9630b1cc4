"""Experiments: planning a comparison (names, --vary, seeds, resume), scheduling its runs into units,
and driving training into run folders (the steps `dllab train` and `dllab compare` take)."""
