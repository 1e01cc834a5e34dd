"""ChatTTS text front-end vs the package: normaliser, prompt ids, refined-text decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from service.runtime.packs import ModelPack
from service.tts.text import (
    Language,
    PromptBuilder,
    detect_language,
    load_homophones,
    normalize,
    split_sentences,
)
from tests.chattts_fixtures import shared_tokenizer_dir
from tests.tools import require_module

pytest_plugins = ("tests.chattts_fixtures",)
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # package numba

TEXTS = [
    "你好，世界。今天天气怎么样？",
    "Hello world! It's 12:30 (noon); let's go - now.",
    "四川美食确实以辣闻名，但也有不辣的选择。比如甜水面、赖汤圆、蛋烘糕、叶儿粑等。",
    "ChatTTS 是一款强大的对话式文本转语音模型[uv_break]，它有中英混读和多说话人的能力。",
    "[laugh]Great, isn't it?[uv_break] I think so: yes!",
    "《三体》的作者是刘慈欣——他说：“宇宙很大。”",
    "Prices: $5 & 10% off @ store #1 ~ today",
    "数字123和English混合，还有emoji😀和日本語のテキスト。",
    "未闭合的标签[uv_break 之后的文本",
    "   ",
]


def _package_normalizer():  # the package's own Normalizer, numba and all
    require_module("ChatTTS", "chattts: bash export/install_chattts.sh")
    import ChatTTS
    from ChatTTS.norm import Normalizer

    table = Path(ChatTTS.__file__).parent / "res" / "homophones_map.json"
    return Normalizer(str(table)), table


def test_detect_language_counts_cjk_chars_against_english_words() -> None:
    assert detect_language("你好 world") is Language.ZH
    assert detect_language("你 hello world") is Language.EN
    assert detect_language("一二 three four") is Language.EN  # tie -> en, as upstream
    assert detect_language("12345") is Language.EN


@pytest.mark.parametrize("text", TEXTS)
def test_normalize_equals_package_normalizer(text: str) -> None:
    normalizer, table = _package_normalizer()
    assert normalize(text) == normalizer(text, do_homophone_replacement=False)
    homophones = load_homophones(table)
    assert normalize(text, homophones=homophones) == normalizer(text)
    for lang in Language:
        assert normalize(text, lang) == normalizer(text, do_homophone_replacement=False,
                                                   lang=lang.value)


def test_normalize_rules_visible_in_output() -> None:
    assert normalize("你好,世界.") == "你好，世界。"  # zh: half -> full width
    assert normalize("Hi! (ok)") == "Hi. ,ok,"  # en: simplified punctuation
    assert normalize("a [laugh] b?") == "a [laugh] b"  # unsupported removed, tag kept


def test_split_sentences_like_upstream() -> None:
    assert split_sentences("第一句。第二句。") == ["第一句。", "第二句。"]
    assert split_sentences("One. Two. Three") == ["One. ", "Two. ", "Three"]
    assert split_sentences("line one\n\nline two") == ["line one", "line two"]
    assert split_sentences("3.14 stays whole") == ["3.14 stays whole"]


def _real_builder() -> tuple[PromptBuilder, object]:
    require_module("ChatTTS", "chattts: bash export/install_chattts.sh")
    from ChatTTS.model import Tokenizer as PackageTokenizer

    folder = shared_tokenizer_dir()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    constants = {
        "code_prompt_template": "[Stts]{speaker}{txt_smp}{speed}{text}[Ptts]",
        "refine_prompt_template": "[Sbreak]{text}[Pbreak]{prompt}",
        "speaker_token": "[spk_emb]", "no_speaker_token": "[empty_spk]",
        "default_speed_token": "[speed_5]",
        "refine_drop_from_id": tok.token_to_id("[break_0]"),
        "refine_eos_token_id": tok.token_to_id("[Ebreak]"),
    }
    return PromptBuilder.create(tok, constants), PackageTokenizer(str(folder))


@pytest.mark.parametrize("text", TEXTS[:8])
def test_prompt_ids_equal_package_tokenizer(text: str) -> None:
    from ChatTTS.model import Speaker

    builder, upstream = _real_builder()
    normalizer, _ = _package_normalizer()
    normed = normalizer(text, do_homophone_replacement=False)
    for spk in ("x", None):
        prompt = Speaker.decorate_code_prompts([normed], "[speed_5]", None, spk)
        want = upstream.encode(prompt, 4)[0][0, :, 0].numpy()
        got = builder.code_prompt_ids(text, spk is not None)
        np.testing.assert_array_equal(got, want)
    want = upstream.encode(Speaker.decorate_text_prompts([normed], ""), 4)[0][0, :, 0].numpy()
    np.testing.assert_array_equal(builder.refine_prompt_ids(text), want)


def test_refined_text_decodes_like_package() -> None:
    builder, upstream = _real_builder()
    rng = np.random.default_rng(0)
    vocab = builder.tokenizer.get_vocab_size()
    break_0 = builder.drop_from_id
    for text in TEXTS[:6]:
        ids = builder.ids(normalize(text))
        noisy = np.insert(ids, rng.integers(0, len(ids), 3), rng.integers(break_0, vocab, 3))
        kept = noisy[noisy < break_0]
        assert builder.refined_text(noisy) == upstream.decode([kept.tolist()])[0]
    as_codes = np.repeat(ids[:, None], 4, axis=1)  # [N, num_vq] form
    assert builder.refined_text(as_codes) == builder.refined_text(ids)


def test_tiny_pack_tokenizer_covers_en_and_zh(chattts_pack: ModelPack) -> None:
    builder = PromptBuilder.from_pack(chattts_pack)
    specials = chattts_pack.constants["special_tokens"]
    ids = builder.code_prompt_ids("Hello world, 你好世界。", has_speaker=True)
    assert ids[0] == specials["[Stts]"] and ids[1] == specials["[spk_emb]"]
    assert ids[2] == specials["[speed_5]"] and ids[-1] == specials["[Ptts]"]
    assert specials["[UNK]"] not in ids
    plain = builder.code_prompt_ids("Hello", has_speaker=False)
    assert plain[1] == specials["[empty_spk]"]
    assert builder.refined_text(builder.ids("你好世界")) == "你 好 世 界"
