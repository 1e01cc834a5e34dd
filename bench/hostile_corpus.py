"""The whole hostile corpus: the first round's cases (bench/hostile.py) and issue 21's
connection and output classes (bench/hostile_http.py, bench/hostile_output.py). Those build
on hostile.py's `Case` and helpers, so the corpus is put together here, above all three."""

from __future__ import annotations

from collections.abc import Callable

from bench import hostile, hostile_http, hostile_output
from bench.hostile import Case


def corpus(extra: list[Callable[[], list[Case]]] | None = None) -> list[Case]:
    """Every case (the TTS half is added by the callers that serve ChatTTS)."""
    wav = hostile.tone_wav(1.0)
    cases = [*hostile.template_cases(wav), *hostile.json_number_cases(wav),
             *hostile.upload_shape_cases(wav), *hostile.audio_cases(), *hostile.auth_cases(wav),
             *hostile.small_cases(), *hostile_output.cases(), *hostile_http.cases()]
    for more in extra or []:
        cases += more()
    return cases
