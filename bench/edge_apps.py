"""The service's app for servers other than uvicorn (bench/bench_edge.py serves it through
Hypercorn and Granian): built from the AUDIOSERVE_* settings at import."""

from service.app import create_app
from service.settings import Settings

app = create_app(Settings())
