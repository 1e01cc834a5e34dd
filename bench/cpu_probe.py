"""`python -m bench.cpu_probe`: the service (as `python -m service` runs it) with CPU probes.

Where the host's CPU goes per request, measured inside the server process: each probed
function adds the CPU time of the thread that runs it (`time.thread_time`) to its
category, exclusive of probed functions it calls (a per-thread stack), so nothing is
counted twice. `GET /bench/cpu` returns the process CPU time so far and every category's
total; `bench/bench_host_cpu.py` reads it before and after a closed-loop run. The process
total minus every probe is the rest: HTTP, multipart/JSON parsing, routing, the batchers
and the event loop.

ONNX Runtime's share is the calling thread's CPU time in `session.run`, which is all of
it when ORT runs one intra-op thread on CPU (what the bench sets) and its launch/sync cost
on CUDA. The probes wrap functions by name, so the service code carries no bench hooks.
"""

from __future__ import annotations

import argparse
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.cli import add_setting_flags, flag_values, load_settings

if TYPE_CHECKING:  # the app (onnxruntime): imported once the command line is read
    from fastapi import FastAPI

    from service.settings import Settings

PROBES: dict[str, list[tuple[str, str]]] = {
    "ort": [("service.runtime.sessions", "GraphRunner.run"),
            ("service.tts.model", "TTSGraphs.gpt_bound")],
    "decode": [("service.pipelines.clap", "decode_audio"),
               ("service.pipelines.emotion2vec", "decode_audio")],
    "features": [("service.pipelines.clap", "ClapPipeline.prepare_samples"),
                 ("service.pipelines.emotion2vec", "post.trim_silence"),
                 ("service.pipelines.emotion2vec", "post.chunk_spans")],
    "batch assembly": [("service.pipelines.clap", "ClapPipeline._run_audio"),
                       ("service.pipelines.clap", "ClapPipeline._run_text"),
                       ("service.pipelines.emotion2vec", "Emotion2vecPipeline._run_batch"),
                       ("service.pipelines.chattts", "ChatTTSPipeline._decode_batch")],
    "text": [("service.pipelines.clap_text", "PromptTokenizer.encode"),
             ("service.pipelines.chattts", "ChatTTSPipeline._pieces"),
             ("service.pipelines.chattts", "ChatTTSPipeline._speaker"),
             ("service.tts.text", "PromptBuilder.code_prompt_ids")],
    "sampling": [("service.tts.gpt_step", "sample_rows"),
                 ("service.tts.sampler_graph", "GraphSampler.sample_rows")],
    "kv cache": [("service.tts.kv_cache", "BatchKVCache.join"),
                 ("service.tts.kv_cache", "BatchKVCache.remove"),
                 ("service.tts.kv_cache", "DeviceKVCache.join"),
                 ("service.tts.kv_cache", "DeviceKVCache.remove")],
    "post": [("service.pipelines.clap", "ClapPipeline.score"),
             ("service.pipelines.clap", "ClapPipeline._timeline"),
             ("service.pipelines.emotion2vec", "post.merge_utterance"),
             ("service.pipelines.emotion2vec", "Emotion2vecPipeline._frames"),
             ("service.pipelines.chattts", "ChatTTSPipeline._postprocess")],
}


class Probes:
    """Exclusive thread-CPU seconds per category (see the module note)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._local = threading.local()

    def wrap(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def probed(*args: Any, **kwargs: Any) -> Any:
            stack: list[float] = self._local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # CPU time of probed callees, to subtract
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                inner = stack.pop()
                if stack:
                    stack[-1] += spent
                with self._lock:
                    self.seconds[category] += spent - inner
                    self.calls[category] += 1
        return probed

    def install(self) -> None:
        import importlib

        for category, targets in PROBES.items():
            for module_name, path in targets:
                owner: Any = importlib.import_module(module_name)
                *parents, name = path.split(".")
                for part in parents:
                    owner = getattr(owner, part)
                setattr(owner, name, self.wrap(category, getattr(owner, name)))

    def watch_gc(self) -> None:
        """Time the garbage collector's passes too (its own category, `gc`)."""
        import gc

        started: list[float] = []

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started.append(time.thread_time())
            elif started:
                with self._lock:
                    self.seconds["gc"] += time.thread_time() - started.pop()
                    self.calls[f"gc{info.get('generation', 0)}"] += 1

        gc.callbacks.append(callback)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"process_cpu_s": time.process_time(), "wall_s": time.perf_counter(),
                    "probes_s": dict(self.seconds), "calls": dict(self.calls)}


def probed_app(settings: Settings) -> FastAPI:
    probes = Probes()
    probes.install()
    probes.watch_gc()
    from service.app import create_app

    app = create_app(settings)
    app.add_api_route("/bench/cpu", probes.snapshot, methods=["GET"],
                      include_in_schema=False)
    return app


def main(argv: list[str] | None = None) -> None:
    prog = "python -m bench.cpu_probe"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_setting_flags(parser)
    settings = load_settings(flag_values(parser.parse_args(argv)), prog)
    import uvicorn

    from service.logs import configure_logging

    configure_logging(settings.log_level)
    uvicorn.run(probed_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level, access_log=False, log_config=None)


if __name__ == "__main__":
    main()
