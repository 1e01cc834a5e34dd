"""Pinned malloc thresholds: a request's few-MB arrays reuse freed memory (no page faults).

Each case runs in a fresh interpreter: glibc's dynamic threshold depends on the process's
history, which in the test session is whatever earlier tests left.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import resource, sys
import numpy as np
from service.runtime.allocator import pin_malloc_thresholds

if sys.argv[1] == "pinned":
    assert pin_malloc_thresholds()

def request():  # what a 10 s CLAP window allocates: several 4 MB arrays, then frees them
    arrays = [np.ones(1_000_000, np.float32) for _ in range(5)]
    return sum(float(a[0]) for a in arrays)

request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    request()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_request(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120)
    return float(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_pinned_thresholds_stop_the_page_faults_of_every_request() -> None:
    default, pinned = faults_per_request("default"), faults_per_request("pinned")
    # glibc's own state here: the freed 20 MB is trimmed and faulted back in every time
    assert default > 1000
    assert pinned < 50
