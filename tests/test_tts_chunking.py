"""Long-text splitting for zh and en: sizes, break points, nothing lost, no word split."""

from __future__ import annotations

import re

import pytest

from service.tts.chunking import split_long_text

EN = ("The quick brown fox jumps over the lazy dog. It wasn't amused; the dog, however, "
      "slept on. Pi is 3.14159 and e is 2.71828! Would you believe it? [uv_break] Yes.")
ZH = ("四川美食确实以辣闻名，但也有不辣的选择。比如甜水面、赖汤圆、蛋烘糕、叶儿粑等，"
      "这些小吃口味温和，然后甜而不腻，也很受欢迎。[laugh]我们下次一起去吧！")
MIXED = "ChatTTS 是一款强大的对话式文本转语音模型，它有中英混读和多说话人的能力。" * 4


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("text", [EN, ZH, MIXED, "短。", "a" * 300, EN + "\n\n" + ZH])
@pytest.mark.parametrize("limit", [10, 40, 80, 1000])
def test_pieces_fit_and_lose_nothing(text: str, limit: int) -> None:
    pieces = split_long_text(text, limit)
    assert _squash("".join(pieces)) == _squash(text)
    words = set(re.findall(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*|\[\w+\]", text))
    for piece in pieces:
        assert piece == piece.strip() and piece
        piece_words = re.findall(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*|\[\w+\]", piece)
        assert set(piece_words) <= words  # no word or tag cut in two
        if len(piece) > limit:  # only an unsplittable atom may exceed the limit
            assert len(piece_words) == 1 and len(piece_words[0]) > limit
    if len(text) <= limit:
        assert pieces == [text.strip()]


def test_prefers_sentence_then_clause_breaks() -> None:
    pieces = split_long_text(EN, 60)
    assert pieces[0] == "The quick brown fox jumps over the lazy dog."
    assert pieces[1].endswith(";") or pieces[1].endswith(",") or pieces[1].endswith(".")
    assert all(not p.endswith("3.") for p in pieces)  # '3.14159' stays whole
    zh = split_long_text(ZH, 30)
    assert zh[0] == "四川美食确实以辣闻名，但也有不辣的选择。"
    assert all(p[-1] in "。，、！" or p.endswith("]") for p in zh[:-1])


def test_rejects_non_positive_limit() -> None:
    with pytest.raises(ValueError):
        split_long_text("abc", 0)
