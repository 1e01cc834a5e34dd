"""HTTP routes, one module per model; each exposes `router`."""
