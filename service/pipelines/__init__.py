"""Per-model pre- and post-processing around the batchers, and the loader that starts them."""
