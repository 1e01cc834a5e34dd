"""Long-text splitting for zh and en: sizes, break points, nothing lost, no word split."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from service.tts.chunking import (
    SentenceSplitter,
    Split,
    split_at_clauses,
    split_at_sentences,
    split_long_text,
    split_pieces,
)

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


# -- text that arrives in fragments (the speech WebSocket) ---------------------------------

FRAGMENTED = [
    "Hello there. How are you today? I'm fine, thanks! Pi is 3.14 and e is 2.72. "
    "[uv_break] Don't stop-me-now... ok",
    "你好。今天天气很好！我们去公园吧，好不好？然后回家。",
    "A very long sentence without any full stop, but with clauses, many clauses, and more "
    "words to push it past the limit of forty characters, so it must be cut early",
    "line one\nline two\n\nline three [laugh] end.",
]


def _fed(text: str, cuts: list[int], max_chars: int, split: Split = "sentence"
         ) -> list[str]:
    splitter = SentenceSplitter(max_chars, split)
    bounds = [0, *cuts, len(text)]
    pieces = [p for a, b in itertools.pairwise(bounds)
              for p in splitter.feed(text[a:b])]
    return pieces + splitter.flush()


@pytest.mark.parametrize("split", ["sentence", "clause", "long"])
@pytest.mark.parametrize("text", FRAGMENTED)
def test_pieces_do_not_depend_on_how_the_text_was_fragmented(text: str, split: Split
                                                             ) -> None:
    rng = random.Random(len(text))
    whole = split_pieces(text, 40, split)
    assert _fed(text, list(range(1, len(text))), 40, split) == whole  # a character at a time
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(30, len(text) - 1))))
        assert _fed(text, cuts, 40, split) == whole, cuts
    assert all(len(p) <= 40 for p in whole)
    assert "".join("".join(whole).split()) == "".join(text.split())  # nothing lost


def test_a_sentence_is_given_as_soon_as_it_is_decided() -> None:
    splitter = SentenceSplitter(200)
    assert splitter.feed("Hello there.") == []  # '.' ends a sentence only before a space
    assert splitter.feed(" How") == ["Hello there."]
    assert splitter.feed(" are you? I'm") == ["How are you?"]
    assert splitter.feed(" pi is 3.") == []
    assert splitter.feed("14 don'") == []
    assert splitter.flush() == ["I'm pi is 3.14 don'"]
    zh = SentenceSplitter(200)
    assert zh.feed("你好。今天") == ["你好。"]  # no space needed after a full-width mark


def test_clauses_end_pieces_too_but_not_inside_numbers() -> None:
    text = "Well, it costs 3,000 dollars; at 10:30 we pay: cash. 我们去公园吧，好不好？"
    assert split_at_clauses(text, 200) == [
        "Well,", "it costs 3,000 dollars;", "at 10:30 we pay:", "cash.", "我们去公园吧，",
        "好不好？"]
    assert split_at_sentences(text, 200) == [
        "Well, it costs 3,000 dollars; at 10:30 we pay: cash.", "我们去公园吧，好不好？"]
    splitter = SentenceSplitter(200, "clause")
    assert splitter.feed("First,") == []  # an ASCII mark ends a clause only before a space
    assert splitter.feed(" then") == ["First,"]
    long = SentenceSplitter(200, "long")  # /tts's default cut: nothing before the end
    assert long.feed("One. Two. ") == [] and long.flush() == ["One. Two."]


def test_an_open_sentence_past_the_limit_gives_its_settled_pieces() -> None:
    splitter = SentenceSplitter(40)
    text = FRAGMENTED[2]
    early = splitter.feed(text[:100])
    assert early and early == split_at_sentences(text, 40)[: len(early)]
