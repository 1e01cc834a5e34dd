"""Audio I/O, a floor: decoding uploads, encoding answers, CLAP's audio features."""
