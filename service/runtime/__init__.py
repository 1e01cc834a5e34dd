"""The model runtime, a floor: packs, ONNX Runtime sessions, admission, metrics, memory."""
