"""`POST /emotion`: speech emotion recognition with Emotion2Vec+ (utterance or frame level).

Multipart (`file` + form fields) or JSON with base64 `audio` (service.routes.uploads). Fields:
`granularity` = `utterance` (default) | `frame`, `return_embedding` (bool), `trim_silence`
(bool: energy-based trim of both ends before analysis).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from fastapi import APIRouter, Request, Response
from pydantic import Field, ValidationInfo, field_validator

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
from service.routes.deps import admit, check_admission, get_pipeline, get_settings
from service.routes.json_body import JsonBodyRoute
from service.routes.params import UploadParams, parse_flag, refuse, shown
from service.routes.responses import UPLOAD_ERRORS, EmotionAnswer, model_response
from service.routes.upload_schema import upload_body
from service.routes.uploads import read_upload

router = APIRouter(tags=["emotion"], route_class=JsonBodyRoute)

_GRANULARITIES = tuple(g.value for g in Granularity)


class EmotionParams(UploadParams):
    """The fields of `/emotion` besides the audio."""

    granularity: Literal["utterance", "frame"] = Field(
        "utterance", description="`utterance`: one set of scores; `frame`: also 50 per "
                                 "second, with merged segments.")
    return_embedding: bool = Field(False, description="Also return the utterance embedding.")
    trim_silence: bool = Field(False, description="Trim silence at both ends first.")

    upload_example: ClassVar[dict[str, Any]] = {"granularity": "frame"}

    @field_validator("granularity", mode="before")
    @classmethod
    def _granularity(cls, raw: Any) -> str:
        text = raw.strip().lower() if isinstance(raw, str) else raw
        if text not in _GRANULARITIES:
            raise refuse(f"granularity must be one of {', '.join(_GRANULARITIES)}, "
                         f"not {shown(raw)}")
        return str(text)

    @field_validator("return_embedding", "trim_silence", mode="before")
    @classmethod
    def _flags(cls, raw: Any, info: ValidationInfo) -> bool:
        return parse_flag(str(info.field_name), raw)

    def options(self) -> EmotionOptions:
        return EmotionOptions(granularity=Granularity(self.granularity),
                              return_embedding=self.return_embedding,
                              trim_silence=self.trim_silence)


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


@router.post("/emotion", openapi_extra=upload_body(EmotionParams),
             responses={200: {"model": EmotionAnswer}, **UPLOAD_ERRORS})
async def emotion(request: Request) -> Response:
    """The speech emotion of an upload: top emotion, all scores, optional frame timeline."""
    pipeline: Emotion2vecPipeline = get_pipeline(request, "emotion2vec")
    check_admission(request, "emotion2vec")
    form, params = await read_upload(request, get_settings(request), EmotionParams)
    options = params.options()
    async with admit(request, "emotion2vec"):
        result = await pipeline.analyse(form.data, options)
    numbers = 2 * len(result.labels) + (0 if result.embedding is None else result.embedding.size)
    if result.frames is not None:
        numbers += result.frames.probabilities.size + len(result.frames.times_s)
    return await model_response(request, EmotionAnswer, numbers, emotion_body, pipeline,
                                result, options)
