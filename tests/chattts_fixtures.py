"""Shared ChatTTS test fixtures: the tiny pack exported once per session by the real export
code, and the package's own PyTorch modules with the SAME weights (plus a `ChatTTS.Chat`
wired to them) so tests can use upstream's pipeline as the reference.

Use them with `pytest_plugins = ("tests.chattts_fixtures",)` in the test module; the pack
is also cached at module level, so several test modules share one export.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from service.runtime.packs import ModelPack, load_pack
from tests.tools import require_module

SHARED_CHATTTS_TOKENIZER = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers" / "chattts"
)
TINY_SEED = 0
_built: dict[str, Path] = {}


def _tiny_models_dir(factory: pytest.TempPathFactory) -> Path:
    if "root" not in _built:
        require_module("ChatTTS", "chattts: bash export/install_chattts.sh")
        from export.chattts import build_tiny

        root = factory.mktemp("chattts_models")
        build_tiny(root / "chattts", seed=TINY_SEED)
        _built["root"] = root
    return _built["root"]


@pytest.fixture(scope="session")
def chattts_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding the tiny ChatTTS pack at `<dir>/chattts`."""
    return _tiny_models_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def chattts_pack_dir(chattts_models_dir: Path) -> Path:
    return chattts_models_dir / "chattts"


@pytest.fixture(scope="session")
def chattts_pack(chattts_pack_dir: Path) -> ModelPack:
    return load_pack(chattts_pack_dir, expected_kind="chattts")


@functools.lru_cache(maxsize=1)
def tiny_modules() -> Any:
    """`export.chattts_modules.ChatTTSModules` with the tiny pack's exact weights."""
    from export.chattts_modules import ChatTTSSizes, build_random
    from export.chattts_tokenizer import build_tiny_tokenizer

    vocab = build_tiny_tokenizer().get_vocab_size()
    return build_random(ChatTTSSizes.tiny(vocab), TINY_SEED)


def reference_chat(pack_dir: Path) -> Any:
    """A `ChatTTS.Chat` on the tiny weights, tokenizer read from the pack folder.

    Example: `chat.infer([text], skip_refine_text=True, split_text=False,
    params_infer_code=Chat.InferCodeParams(spk_emb=s, manual_seed=1, show_tqdm=False))`.
    """
    from export.chattts_modules import reference_chat as build

    return build(tiny_modules(), pack_dir)


def shared_tokenizer_dir() -> Path:
    """The real ChatTTS tokenizer in ../shared/data; skips the test when absent."""
    if not (SHARED_CHATTTS_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"real ChatTTS tokenizer not found at {SHARED_CHATTTS_TOKENIZER}")
    return SHARED_CHATTTS_TOKENIZER
