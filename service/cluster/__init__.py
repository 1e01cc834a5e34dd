"""audioserve on a Ray Serve cluster: the same app, its models in replicas of their own.

An ingress deployment runs the FastAPI app of `service.app` (every route, error and
header) and the pipelines' CPU work; one deployment per model owns that model's ONNX
sessions and this project's batcher or TTS step engine. The pipelines reach them through
`service.cluster.remote.RaySeam`, the Ray side of `service.seam.handoff`. Only this package imports
ray; `python -m service` never does. See docs/cluster.md.
"""
