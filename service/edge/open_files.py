"""The open-file limit (`ulimit -n`, RLIMIT_NOFILE) against the connection cap.

Every connection is a file descriptor. Under `ulimit -n 1024` with the default
`AUDIOSERVE_MAX_CONNECTIONS=1024` the descriptors ran out before the cap refused anyone:
accept() failed with EMFILE (connections reset unanswered under uvloop; a traceback and
a second without accepting under asyncio's loop) and nothing could be opened, a pack or
a saved voice. So at start-up
the soft limit is raised to the hard limit when it cannot hold the cap (what systemd
advises a server that needs more than 1024 files: the low soft default only protects
programs that still use select()), and a hard limit that cannot hold it either is a
setting error that names both numbers and both ways out.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource

SPARE_DESCRIPTORS = 128
"""Descriptors kept free above the connections and what the process holds at the check.
A started `python -m service` with the three packs on CPU held 19, 10 more than at the
check (the listening socket, the event loop's epoll and wake-up pipe, ONNX Runtime's
cache files, pipes); CUDA's device files add some; the rest is for files open for a
moment (packs loading while the server serves, saved voices) and for connections over
the cap, each holding a descriptor while it is answered 503 (up to `REFUSAL_DRAIN_S`):
77 at once in the hostile benchmark's burst of 1,100 sockets (docs/hardening.md)."""

log = logging.getLogger("audioserve.server")


class OpenFileShortage(Exception):
    """The hard open-file limit cannot hold the connection cap; the message says both
    numbers and the fix."""


def open_descriptors() -> int:
    """Descriptors this process holds now (the listing's own included); 0 where the
    system cannot list them."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return 0


def fit_open_file_limit(max_connections: int, *, per_connection: float = 1.0,
                        held: int | None = None, holder: str = "the server") -> None:
    """Raise the soft open-file limit to the hard one if it cannot hold `max_connections`
    (at `per_connection` descriptors each) plus `held` (default: what this process holds
    now) plus `SPARE_DESCRIPTORS`; raise `OpenFileShortage` if the hard limit cannot."""
    held = open_descriptors() if held is None else held
    needed = math.ceil(max_connections * per_connection) + held + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited or soft >= needed:
        return
    if hard != unlimited and hard < needed:
        fits = math.floor((hard - held - SPARE_DESCRIPTORS) / per_connection)
        lower = (f", or lower AUDIOSERVE_MAX_CONNECTIONS to {fits} or less" if fits >= 1
                 else "")
        raise OpenFileShortage(
            f"AUDIOSERVE_MAX_CONNECTIONS={max_connections}: {holder} needs {needed} open "
            f"files ({_breakdown(max_connections, per_connection, held)}), over the hard "
            f"open-file limit of {hard} (soft {soft}); raise `ulimit -n` (its hard limit) "
            f"to {needed} or more{lower} (docs/hardening.md, \"Open files\")")
    target = needed if hard == unlimited else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # a cap below the hard limit (macOS's OPEN_MAX): ask less
        target = needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    log.info("open-file limit raised from %d to %d (the hard limit is %d): %s needs %d for "
             "AUDIOSERVE_MAX_CONNECTIONS=%d (%s)", soft, target, hard, holder, needed,
             max_connections, _breakdown(max_connections, per_connection, held))


def _breakdown(max_connections: int, per_connection: float, held: int) -> str:
    each = "" if per_connection == 1 else f" at {per_connection:g} each"
    now = f"{held} open now, " if held else ""
    return (f"{math.ceil(max_connections * per_connection)} for the connections{each}, "
            f"{now}{SPARE_DESCRIPTORS} spare")
