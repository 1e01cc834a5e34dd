"""Offline tools: upstream checkpoints -> ONNX model packs (see service/runtime/packs.py for the
format).

Needs the `export` extra (torch, transformers, ...). The service never imports this package.
"""
