"""Emotion2vec pre/post-processing in numpy: trim, chunks, merge, smoothing, segments."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.pipelines import emotion2vec_post as post
from tests.emotion2vec_fixtures import SR, make_clip


def test_chunks_tile_the_clip_in_equal_parts() -> None:
    for total in (400, 30 * SR, 30 * SR + 1, 95 * SR + 17):
        spans = post.chunk_spans(total, 30 * SR)
        assert spans[0].start == 0 and spans[-1].end == total
        assert all(a.end == b.start for a, b in itertools.pairwise(spans))
        assert max(s.length for s in spans) <= 30 * SR
        assert max(s.length for s in spans) - min(s.length for s in spans) <= len(spans)


def test_trim_keeps_the_loud_part_with_a_margin() -> None:
    clip = np.concatenate([np.zeros(SR // 2, np.float32), make_clip(1.0, seed=0),
                           1e-5 * np.ones(SR, np.float32)])
    span = post.trim_silence(clip, SR, 400)
    assert span.start == SR // 2 - round(post.TRIM_MARGIN_S * SR)
    assert abs(span.end - (SR // 2 + SR + round(post.TRIM_MARGIN_S * SR))) <= 320
    silent = np.zeros(SR, np.float32)
    assert post.trim_silence(silent, SR, 400) == post.Span(0, SR)
    click = np.zeros(SR, np.float32)
    click[SR // 2] = 0.5  # loud in one 20 ms frame: that frame plus the margins
    assert post.trim_silence(click, SR, 400).length == 320 + 2 * round(post.TRIM_MARGIN_S * SR)
    assert post.trim_silence(click, SR, 8_000) == post.Span(0, SR)  # never below the minimum


def test_smoothing_is_a_centred_moving_average() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((37, 9))
    got = post.smooth(probs, 5)
    for i in range(len(probs)):
        np.testing.assert_allclose(got[i], probs[max(0, i - 2) : i + 3].mean(axis=0))


def test_segments_tile_the_span_and_follow_the_dominant_label() -> None:
    frames = 200
    probs = np.full((frames, 9), 0.01)
    probs[:80, 3] = 1.0  # happy
    probs[80:, 6] = 1.0  # sad
    times = 1.0 + np.arange(frames) / 50
    segs = post.segments(times, probs, 0.98, 5.02, 50.0)
    assert [s.label for s in segs] == [3, 6]
    assert segs[0].start_s == 0.98 and segs[-1].end_s == 5.02
    assert segs[0].end_s == segs[1].start_s == pytest.approx(1.0 + 80 / 50, abs=0.05)
    assert post.segments(times[:0], probs[:0], 0.0, 1.0, 50.0) == []


def test_merge_weights_chunk_embeddings_by_frames() -> None:
    rng = np.random.default_rng(1)
    head = rng.standard_normal((9, 5)).astype(np.float32)
    frames = [rng.standard_normal((n, 4)) for n in (10, 30)]
    chunks = [post.ChunkOutput(logits=np.zeros(9), embedding=f.mean(axis=0),
                               frame_logits=np.zeros((len(f), 9))) for f in frames]
    probs, embedding = post.merge_utterance(chunks, head)
    whole = np.concatenate(frames).mean(axis=0)  # pooling over every frame of the clip
    np.testing.assert_allclose(embedding, whole, atol=1e-6)
    np.testing.assert_allclose(probs, post.softmax(head[:, :-1] @ whole + head[:, -1]),
                               atol=1e-6)
    single, _ = post.merge_utterance(chunks[:1], head)
    np.testing.assert_allclose(single, post.softmax(np.zeros(9)))  # one chunk: graph logits
