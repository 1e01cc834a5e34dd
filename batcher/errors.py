"""Errors the batcher raises to its callers. They know nothing of HTTP; service maps them."""

from __future__ import annotations


class BatcherError(Exception):
    """Base of the batcher's own errors."""


class Overloaded(BatcherError):
    """The queue is full: the caller should retry later (`retry_after_s` is an estimate)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(BatcherError):
    """The item's deadline passed while it was still queued; it was never run."""


class BatcherClosed(BatcherError):
    """The batcher is shutting down and accepts no new items."""
