"""Routes, HTTP and WebSocket (each exposes `router`), reading requests and shaping answers."""
