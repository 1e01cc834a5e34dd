"""One log format for every line a server prints: the app's loggers, uvicorn's, Ray's driver.

uvicorn's own logging config gives its loggers handlers and formats of their own, so its
lines and the app's came out interleaved in two formats. Here the root logger gets the one
handler and uvicorn's loggers only propagate to it (pass `log_config=None` to uvicorn).
"""

from __future__ import annotations

import logging
import logging.config

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACE = 5  # uvicorn's level below DEBUG
LEVELS = {"critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE}
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(level: str) -> None:
    """Every logger to stderr in `FORMAT`, at `level` (a `LogLevel` setting)."""
    logging.addLevelName(TRACE, "TRACE")
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": LEVELS[level]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
    })


def adopt(name: str) -> None:
    """A library logger that set up a handler and format of its own (Ray Serve's, on import)
    prints through the root's instead."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
