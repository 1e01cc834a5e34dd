"""Live analysis: `WS /v1/audio/analysis/stream` (protocol, decoding, windows, VAD, session).

The route is service/routes/live_analysis.py; the protocol is documented in
service/live/protocol.py and docs/live-analysis.md.
"""
