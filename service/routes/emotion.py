"""`POST /emotion`: speech emotion recognition with Emotion2Vec+ (utterance or frame level).

Multipart (`file` + form fields) or JSON with base64 `audio` (service.uploads). Fields:
`granularity` = `utterance` (default) | `frame`, `return_embedding` (bool), `trim_silence`
(bool: energy-based trim of both ends before analysis).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.deps import admit, get_pipeline, get_settings
from service.errors import InvalidInput
from service.json_body import JsonBodyRoute
from service.pipelines import emotion2vec_post as post
from service.pipelines.emotion2vec import (
    MERGE_RULE,
    Emotion2vecPipeline,
    EmotionOptions,
    EmotionResult,
    FrameScores,
    Granularity,
)
from service.routes.common import model_fields
from service.uploads import AudioInput, read_audio_input

router = APIRouter(tags=["emotion"], route_class=JsonBodyRoute)

_GRANULARITIES = ", ".join(g.value for g in Granularity)


def parse_options(form: AudioInput) -> EmotionOptions:
    raw = form.first("granularity", Granularity.UTTERANCE.value)
    try:
        granularity = Granularity(str(raw).strip().lower())
    except ValueError:
        raise InvalidInput(f"granularity must be one of {_GRANULARITIES}, not {raw!r}") from None
    return EmotionOptions(granularity=granularity,
                          return_embedding=form.flag("return_embedding"),
                          trim_silence=form.flag("trim_silence"))


def _frames_body(frames: FrameScores, result: EmotionResult, frame_rate: float
                 ) -> dict[str, Any]:
    labels = result.labels
    return {
        "frame_rate": frame_rate,
        "labels": [label.en for label in labels],
        "times_s": [round(float(t), 4) for t in frames.times_s],
        "scores": [[round(float(p), 5) for p in row] for row in frames.probabilities],
        "segments": [_segment(s, labels) for s in frames.segments],
        "smoothing": f"{post.SMOOTHING_S:g} s centred moving average of frame probabilities,"
                     " then runs of the same top emotion",
    }


def _segment(segment: post.Segment, labels: tuple[post.Label, ...]) -> dict[str, Any]:
    return {"start_s": round(segment.start_s, 4), "end_s": round(segment.end_s, 4),
            **labels[segment.label].as_dict(segment.score)}


def emotion_body(pipeline: Emotion2vecPipeline, result: EmotionResult,
                 options: EmotionOptions) -> dict[str, Any]:
    info = pipeline.info()
    ranked = result.ranked()
    rate = pipeline.constants.sample_rate
    body: dict[str, Any] = {"object": "emotion",
                            **model_fields(info, "emotion2vec", "emotions")}
    body.update({
        "granularity": options.granularity.value,
        "emotion": ranked[0][0].as_dict(ranked[0][1]),
        "scores": [label.as_dict(score) for label, score in ranked],
        "duration_s": round(result.duration_s, 4),
        "analysed": {"start_s": round(result.analysed.start / rate, 4),
                     "end_s": round(result.analysed.end / rate, 4),
                     "trimmed": result.analysed.length < round(result.duration_s * rate)},
        "chunks": result.chunks,
    })
    if result.chunks > 1:
        body["merge"] = MERGE_RULE
    if result.embedding is not None:
        body["embedding"] = [float(x) for x in result.embedding]
    if result.frames is not None:
        body["frames"] = _frames_body(result.frames, result, pipeline.constants.frame_rate)
    body["timings_ms"] = result.timings_ms
    return body


@router.post("/emotion")
async def emotion(request: Request) -> dict[str, Any]:
    """The speech emotion of an upload: top emotion, all scores, optional frame timeline."""
    pipeline: Emotion2vecPipeline = get_pipeline(request, "emotion2vec")
    async with admit(request, "emotion2vec"):
        form = await read_audio_input(request, get_settings(request))
        options = parse_options(form)
        result = await pipeline.analyse(form.data, options)
    return emotion_body(pipeline, result, options)
