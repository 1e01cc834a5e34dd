"""The seam: where a pipeline hands work to its batcher or TTS engine, here or on a cluster."""
