"""The web page in a real browser (headless Chromium, offline) against the real service on
the tiny demo packs over a real socket: every tab used as a person would, with what it
draws checked against what the API answers for the same input, and no console errors.
Screenshots of each tab are kept for a person to look at (tests/ui_browser.py says where)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf

from tests.audio_fixtures import tiny_png
from tests.clap_fixtures import make_clip, wav_bytes
from tests.emotion2vec_fixtures import make_clip as speech_clip
from tests.tts_server import RunningServer, serve_app
from tests.ui_browser import Browser, chromium, require_browser

pytest_plugins = ("tests.clap_fixtures", "tests.emotion2vec_fixtures", "tests.chattts_fixtures")

ANIMALS = ["a dog barking", "a cat meowing", "birds chirping", "a rooster crowing",
           "a cow mooing", "frogs croaking"]  # the page's first preset, chosen on load
LONG_SPEECH = "a long one that we will not wait for"  # seed 1: ~870 tokens (18 s) of speech


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, clap_models_dir: Path,
           emotion_models_dir: Path, chattts_models_dir: Path) -> Iterator[RunningServer]:
    require_browser()
    models = tmp_path_factory.mktemp("ui_models")
    for pack in (clap_models_dir / "clap", emotion_models_dir / "emotion2vec",
                 chattts_models_dir / "chattts"):
        (models / pack.name).symlink_to(pack)
    with serve_app(models_dir=models, voices_dir=tmp_path_factory.mktemp("voices"),
                   warmup=False) as s:
        yield s


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ui_files")
    out = {"long": root / "street-25s.wav", "speech": root / "speech-4s.wav",
           "png": root / "picture.png", "mic": root / "mic.wav"}
    out["long"].write_bytes(wav_bytes(make_clip(25.0, seed=1)))  # 3 CLAP windows
    sf.write(out["speech"], speech_clip(4.0, seed=2), 16000, subtype="PCM_16")
    out["png"].write_bytes(tiny_png())
    # Chromium's fake microphone loops this file (16-bit PCM WAV)
    sf.write(out["mic"], make_clip(3.0, seed=3), 48000, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def module_browser(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
                   ) -> Iterator[Browser]:
    with chromium(tmp_path_factory.mktemp("chromium"), fake_mic_wav=files["mic"]) as b:
        yield b


@pytest.fixture
def browser(module_browser: Browser) -> Browser:
    module_browser.driver.set_window_size(1280, 1000)
    module_browser.logs()  # start each test with an empty console
    return module_browser


def open_tab(browser: Browser, server: RunningServer, tab: str) -> None:
    """A fresh load of the page on `tab` (same URL but the hash would not reload it)."""
    browser.driver.get("about:blank")
    browser.driver.get(f"{server.url}/#{tab}")
    browser.wait(lambda d: browser.js("return document.readyState") == "complete", 20)
    browser.wait(lambda d: browser.visible(f"panel-{tab}"), 20, f"the {tab} tab")


def recorded_s(browser: Browser) -> float:
    """The seconds the page says it has recorded so far ("recording… 1.2 s"), else 0."""
    text = browser.by_id("classify-source").text
    return float(text.split("recording… ")[1].split(" s")[0]) if "recording… " in text else 0.0


def assert_clean_console(browser: Browser, *allowed_statuses: int) -> None:
    problems = browser.problems(allowed_statuses)
    assert not problems, f"console errors/warnings: {problems}"


def bars(browser: Browser, list_id: str) -> list[tuple[str, float]]:
    rows = browser.js(
        "return [...document.querySelectorAll(`#${arguments[0]} .bar-row`)].map(r =>"
        " [r.dataset.label, Number(r.dataset.value),"
        "  r.querySelector('.bar-fill').getBoundingClientRect().width /"
        "  r.querySelector('.bar-track').getBoundingClientRect().width])", list_id)
    for label, value, drawn in rows:  # the bar's drawn length is its value
        assert drawn == pytest.approx(max(value, 0.005), abs=0.01), label
    return [(label, value) for label, value, _ in rows]


def classify_api(server: RunningServer, path: Path, labels: list[str]) -> dict[str, Any]:
    r = httpx.post(server.url + "/classify", files={"file": (path.name, path.read_bytes())},
                   data={"labels": labels, "per_window": "true"}, timeout=60)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# -- Classify -------------------------------------------------------------------------

def test_classify_upload_draws_ranked_scores_and_heatmap(
        browser: Browser, server: RunningServer, files: dict[str, Path]) -> None:
    open_tab(browser, server, "classify")
    chips = browser.js("return [...document.querySelectorAll('#classify-chips .chip span')]"
                       ".map(s => s.textContent)")
    assert chips == ANIMALS
    browser.by_id("classify-file").send_keys(str(files["long"]))
    browser.by_id("classify-run").click()
    browser.wait(lambda d: browser.visible("classify-heatmap-figure"), 60, "the heat map")

    expected = classify_api(server, files["long"], ANIMALS)
    drawn = bars(browser, "classify-bars")
    assert [label for label, _ in drawn] == [s["label"] for s in expected["labels"]]
    assert [v for _, v in drawn] == pytest.approx(
        [s["probability"] for s in expected["labels"]], abs=1e-6)
    assert [v for _, v in drawn] == sorted((v for _, v in drawn), reverse=True)

    windows = expected["per_window"]
    assert len(windows) == expected["windows_total"] == 3
    cells = browser.js("return [...document.querySelectorAll('#classify-heatmap .hm-row')]"
                       ".slice(1).map(r => [r.querySelector('.hm-label').textContent,"
                       " [...r.querySelectorAll('.hm-cell')].map(c => Number(c.dataset.p))])")
    assert [label for label, _ in cells] == [label for label, _ in drawn]
    for label, row in cells:
        want = [next(s["probability"] for s in w["labels"] if s["label"] == label)
                for w in windows]
        assert row == pytest.approx(want, abs=1e-6), label
    assert browser.visible("demo-banner")
    assert "3 of 3 windows used" in browser.by_id("classify-meta").text
    browser.screenshot("classify")
    assert_clean_console(browser)


def test_classify_a_microphone_recording(browser: Browser, server: RunningServer) -> None:
    """MediaRecorder's WebM/Opus from Chromium's fake microphone, decoded by the service."""
    open_tab(browser, server, "classify")
    record = browser.by_id("classify-record")
    record.click()
    browser.wait(lambda d: record.get_attribute("aria-pressed") == "true", 10, "recording")
    browser.wait(lambda d: recorded_s(browser) >= 2.0, 30, "2 s recorded, by the page's clock")
    record.click()
    browser.wait(lambda d: "recording:" in browser.by_id("classify-source").text, 10,
                 "the recording to end")
    source = browser.by_id("classify-source").text  # "recording: 2.3 s, audio/webm..."
    assert "webm" in source
    page_s = float(source.split("recording: ")[1].split(" s")[0])
    browser.by_id("classify-run").click()
    browser.wait(lambda d: browser.visible("classify-result"), 60, "scores")
    assert len(bars(browser, "classify-bars")) == len(ANIMALS)
    seconds = float(browser.by_id("classify-meta").text.split(" s of audio")[0])
    # what was recorded, decoded from WebM/Opus: about as long as the page recorded for
    assert 1.0 < seconds <= page_s + 0.5, (seconds, page_s)
    assert_clean_console(browser)


def test_classify_live_from_the_microphone(browser: Browser, server: RunningServer) -> None:
    """Live mode: Chromium's fake microphone streamed as WebM/Opus over the WebSocket; the
    heat map grows a column per scored window while it records, the bars show the newest."""
    open_tab(browser, server, "classify")
    live = browser.by_id("classify-live")
    live.click()

    def columns() -> int:
        return int(browser.js("return document.querySelectorAll("
                              "'#classify-heatmap .hm-time').length"))

    browser.wait(lambda d: columns() >= 1, 60, "the first live window")
    first = columns()
    browser.wait(lambda d: columns() > first, 60, "the heat map to grow")
    assert live.get_attribute("aria-pressed") == "true"  # still recording
    assert len(bars(browser, "classify-bars")) == len(ANIMALS)
    assert browser.by_id("classify-meta").text.startswith("live")
    live.click()  # stop: the server computes what is pending, then closes
    browser.wait(lambda d: live.get_attribute("aria-pressed") == "false", 30,
                 "the stream to end")
    assert not browser.visible("classify-error")
    assert_clean_console(browser)


def test_errors_show_the_servers_message(browser: Browser, server: RunningServer,
                                         files: dict[str, Path]) -> None:
    open_tab(browser, server, "classify")
    browser.by_id("classify-file").send_keys(str(files["png"]))
    browser.by_id("classify-run").click()
    browser.wait(lambda d: browser.visible("classify-error"), 30, "the 415 message")
    api = httpx.post(server.url + "/classify", data={"labels": "dog"},
                     files={"file": ("picture.png", files["png"].read_bytes())})
    assert api.status_code == 415
    shown = browser.by_id("classify-error").text
    assert shown == f"415 unsupported_media: {api.json()['error']['message']}"
    browser.screenshot("classify-error-415")

    browser.by_id("classify-file").send_keys(str(files["long"]))
    entry = browser.by_id("classify-label-entry")
    entry.send_keys("x" * 300 + "\n")  # over AUDIOSERVE_MAX_LABEL_CHARS (200)
    browser.by_id("classify-run").click()
    browser.wait(lambda d: browser.by_id("classify-error").text.startswith("422 "), 30,
                 "the 422 message")
    assert "200" in browser.by_id("classify-error").text
    assert not browser.visible("classify-result")
    assert_clean_console(browser, 415, 422)


# -- Emotion --------------------------------------------------------------------------

def test_emotion_frame_timeline_follows_playback(browser: Browser, server: RunningServer,
                                                 files: dict[str, Path]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    open_tab(browser, server, "emotion")
    assert browser.js("return document.getElementById('emotion-granularity').value") == "frame"
    browser.by_id("emotion-file").send_keys(str(files["speech"]))
    browser.by_id("emotion-run").click()
    browser.wait(lambda d: browser.visible("emotion-timeline-figure"), 60, "the timeline")

    r = httpx.post(server.url + "/emotion", data={"granularity": "frame"},
                   files={"file": ("s.wav", files["speech"].read_bytes())}, timeout=60)
    expected = r.json()
    assert [label for label, _ in bars(browser, "emotion-bars")] == \
        [s["label"] for s in expected["scores"]]
    assert browser.by_id("emotion-top").text.startswith(expected["emotion"]["emoji"])
    segments = browser.js("return [...document.querySelectorAll('#emotion-segments .segment')]"
                          ".map(s => s.dataset.label)")
    assert segments == [s["label"] for s in expected["frames"]["segments"]]
    coloured = browser.js(
        "const c = document.getElementById('emotion-canvas');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "const seen = new Set(); for (let i = 0; i < d.length; i += 4)"
        " if (d[i+3] > 200) seen.add(`${d[i]},${d[i+1]},${d[i+2]}`); return seen.size;")
    assert coloured > 9  # a line per emotion, in its own colour (plus anti-aliasing)

    browser.js("document.getElementById('emotion-audio').play()")
    browser.wait(lambda d: float(browser.by_id("emotion-cursor").get_attribute("data-time"))
                 > 0.5, 20, "the cursor to move with playback")
    browser.js("document.getElementById('emotion-audio').pause()")
    cursor_x = browser.js("return document.getElementById('emotion-cursor')"
                          ".getBoundingClientRect().left")
    timeline = browser.by_id("emotion-timeline")
    box = browser.js("return arguments[0].getBoundingClientRect().toJSON()", timeline)
    assert box["left"] + 34 < cursor_x < box["left"] + box["width"] / 2
    browser.screenshot("emotion")
    # a click on the timeline seeks there (x from the plot's left edge, after the axis)
    target = 34 + 0.75 * (box["width"] - 34)
    ActionChains(browser.driver).move_to_element_with_offset(
        timeline, int(target - box["width"] / 2), 0).click().perform()
    seek = browser.js("return document.getElementById('emotion-audio').currentTime")
    assert seek == pytest.approx(0.75 * expected["duration_s"], abs=0.1)
    assert_clean_console(browser)


# -- Speech ---------------------------------------------------------------------------

def choose(browser: Browser, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    browser.wait(lambda d: value in [o.get_attribute("value")
                                     for o in Select(browser.by_id(select_id)).options],
                 20, f"option {value!r}")
    Select(browser.by_id(select_id)).select_by_value(value)


def audio_duration(browser: Browser) -> float:
    duration: float = browser.wait(lambda d: browser.js(
        "const a = document.getElementById('speech-audio');"
        "return a.readyState >= 1 && a.duration > 0 ? a.duration : false"), 30,
        "the <audio> element's duration")
    return duration


def test_emotion_live_from_the_microphone(server: RunningServer, speech_files: list[Path],
                                         tmp_path: Path) -> None:
    """Live mode on real speech (Chromium's fake microphone playing RAVDESS clips with
    pauses): each utterance's frames and segments join the timeline as it ends."""
    from tests.live_fixtures import speech_stream

    mic = tmp_path / "speech-mic.wav"
    sf.write(mic, speech_stream(speech_files, count=3), 48000, subtype="PCM_16")
    with chromium(tmp_path / "chromium", fake_mic_wav=mic) as browser:
        open_tab(browser, server, "emotion")
        live = browser.by_id("emotion-live")
        live.click()

        def utterances() -> int:
            text = browser.by_id("emotion-meta").text
            return int(text.split(" utterance")[0].split("· ")[-1]) if "live" in text else 0

        browser.wait(lambda d: utterances() >= 1, 90, "the first utterance")
        first = utterances()
        browser.wait(lambda d: utterances() > first, 90, "the timeline to grow")
        assert live.get_attribute("aria-pressed") == "true"  # still recording
        segments = browser.js("return document.querySelectorAll("
                              "'#emotion-segments .segment').length")
        assert segments >= 2
        assert browser.visible("emotion-timeline-figure")
        live.click()
        browser.wait(lambda d: live.get_attribute("aria-pressed") == "false", 30,
                     "the stream to end")
        assert not browser.visible("emotion-error")
        # every partial the server sent was shown, and every one was replaced by its final
        meta = browser.by_id("emotion-meta")
        shown_partials = meta.get_attribute("data-partials")
        print(f"emotion.partial events shown: {shown_partials}")
        assert shown_partials == meta.get_attribute("data-partials-sent")
        assert browser.js("return document.querySelectorAll('#emotion-segments .interim, "
                          "#emotion-top.interim, #emotion-bars.interim').length") == 0
        assert "so far" not in meta.text
        assert_clean_console(browser)


def test_speech_generates_a_playable_file(browser: Browser, server: RunningServer) -> None:
    open_tab(browser, server, "speech")
    choose(browser, "speech-voice", "alloy")
    browser.by_id("speech-run").click()
    duration = audio_duration(browser)
    meta = browser.by_id("speech-meta").text
    said = float(meta.split(" s of speech")[0])
    # the demo pack's random weights may end a piece after one token (10.7 ms: a CI run
    # had it); the file plays, and as long as the page says (shown to 0.1 s)
    assert duration > 0 and duration == pytest.approx(said, abs=0.051)
    link = browser.by_id("speech-download")
    assert link.get_attribute("href").startswith("blob:")
    assert link.get_attribute("download") == "speech.wav"
    assert browser.visible("demo-banner")
    assert_clean_console(browser)


def test_streamed_speech_starts_playing_before_the_request_ends(
        browser: Browser, server: RunningServer) -> None:
    open_tab(browser, server, "speech")
    text = browser.by_id("speech-text")
    text.clear()
    text.send_keys(LONG_SPEECH)
    choose(browser, "speech-voice", "")
    browser.by_id("speech-seed").send_keys("1")
    browser.by_id("speech-stream").click()
    assert not browser.by_id("speech-format").is_enabled()  # streams are PCM, saved as WAV
    browser.by_id("speech-run").click()
    timings = browser.wait(lambda d: browser.js(
        "const m = document.getElementById('speech-meta').dataset;"
        "return m.totalMs ? Object.fromEntries(Object.entries(m).map(([k, v]) => [k, +v]))"
        " : false"), 90, "the stream to end")
    assert timings["chunks"] >= 3
    assert timings["ttfaMs"] < timings["firstPlayMs"] < timings["totalMs"]
    assert timings["playedAtEndMs"] > 100  # the audio clock ran while chunks still came
    duration = audio_duration(browser)  # the whole stream as WAV for replay and download
    whole = httpx.post(server.url + "/tts", json={"text": LONG_SPEECH, "seed": 1,
                                                   "format": "pcm"}, timeout=120)
    assert duration == pytest.approx(len(whole.content) / 2 / 24000, abs=1e-3)
    assert "time to first audio" in browser.by_id("speech-meta").text
    browser.screenshot("speech")
    assert_clean_console(browser)


def live_timings(browser: Browser, timeout_s: float = 90) -> dict[str, float]:
    timings: dict[str, float] = browser.wait(lambda d: browser.js(
        "const m = document.getElementById('speech-meta').dataset;"
        "return m.totalMs ? Object.fromEntries(Object.entries(m).map(([k, v]) => [k, +v]))"
        " : false"), timeout_s, "the live utterance to end")
    return timings


def test_live_speech_feeds_words_and_plays_each_sentence(browser: Browser,
                                                         server: RunningServer) -> None:
    """Live mode: the text fed word by word over WS /v1/audio/speech/stream; the saved
    audio is /tts's with split "sentence" and the same seed."""
    said = "Live speech starts early. A second sentence follows it."
    open_tab(browser, server, "speech")
    text = browser.by_id("speech-text")
    text.clear()
    text.send_keys(said)
    choose(browser, "speech-voice", "")
    browser.by_id("speech-seed").send_keys("1")
    browser.by_id("speech-live").click()
    assert browser.by_id("speech-live").get_attribute("aria-pressed") == "true"
    timings = live_timings(browser)
    assert timings["sentences"] == 2 and timings["cancelled"] == 0
    assert 0 < timings["ttfaMs"] < timings["totalMs"]
    assert browser.by_id("speech-live").get_attribute("aria-pressed") == "false"
    whole = httpx.post(server.url + "/tts", json={"text": said, "voice": "alloy",
                                                   "sampling_seed": 1, "format": "pcm",
                                                   "split": "sentence"}, timeout=120)
    assert audio_duration(browser) == pytest.approx(len(whole.content) / 2 / 24000, abs=1e-3)
    assert "time to first audio" in browser.by_id("speech-meta").text
    assert_clean_console(browser)


def test_live_speech_barge_in(browser: Browser, server: RunningServer) -> None:
    open_tab(browser, server, "speech")
    text = browser.by_id("speech-text")
    text.clear()
    text.send_keys(f"{LONG_SPEECH}. " * 4)
    choose(browser, "speech-voice", "")
    browser.by_id("speech-seed").send_keys("1")
    wps = browser.by_id("speech-live-wps")
    wps.clear()
    wps.send_keys("5")
    browser.by_id("speech-live").click()
    browser.wait(lambda d: "first audio" in browser.by_id("speech-meta").text, 60,
                 "the first sentence's audio")
    browser.by_id("speech-barge").click()
    timings = live_timings(browser)
    assert timings["cancelled"] == 1
    assert "barged in after" in browser.by_id("speech-meta").text
    assert_clean_console(browser)


SEND_LOG = ("window.sentLog = []; const send = WebSocket.prototype.send;"
            "WebSocket.prototype.send = function (d) {"
            "  if (typeof d === 'string') sentLog.push(JSON.parse(d));"
            "  return send.call(this, d); }")
"""Records every JSON message the page sends on a socket, in `sentLog`."""


def type_keys(element: Any, text: str) -> None:
    for key in text:  # one key at a time, as a person types
        element.send_keys(key)


def start_typing_live(browser: Browser, server: RunningServer) -> Any:
    open_tab(browser, server, "speech")
    browser.js(SEND_LOG)
    text = browser.by_id("speech-text")
    text.clear()
    choose(browser, "speech-voice", "")
    browser.by_id("speech-seed").send_keys("1")
    browser.by_id("speech-live-typed").click()
    browser.by_id("speech-live").click()
    assert browser.by_id("speech-live-done").is_enabled()
    browser.wait(lambda d: any(m["type"] == "session.config"
                               for m in browser.js("return sentLog")), 20, "the socket")
    return text


def test_live_speech_typed_word_by_word(browser: Browser, server: RunningServer) -> None:
    """"Type live": each word goes as it is typed; the first sentence's audio starts before
    the second is typed (so before input.done); Enter ends the utterance; the sent part
    cannot be edited; the audio is /tts's with split "sentence" and the same seed."""
    from selenium.webdriver.common.keys import Keys

    first, second = "Live speech starts early. ", "A second sentence follows it."
    text = start_typing_live(browser, server)
    type_keys(text, first)
    text.send_keys(Keys.BACKSPACE)  # would change the sent part: undone
    text.send_keys(Keys.HOME, "X")  # so would an insert before its end
    assert text.get_attribute("value") == first
    assert "Sent, locked: “Live speech starts early.”" in browser.by_id("speech-live-sent").text
    browser.wait(lambda d: "sentence 1: “Live speech starts early.” · first audio after "
                 in browser.by_id("speech-meta").text, 60, "sentence 0's first audio")
    browser.screenshot("speech-typed")
    type_keys(text, second)
    text.send_keys(Keys.ENTER)
    timings = live_timings(browser)
    assert timings["sentences"] == 2 and timings["cancelled"] == 0
    assert 0 < timings["ttfaMs"] < timings["totalMs"]
    meta = browser.by_id("speech-meta").text
    assert f"time to first audio {timings['ttfaMs']:.0f} ms" in meta
    sent = browser.js("return sentLog")
    fragments = [m["text"] for m in sent if m["type"] == "input.text"]
    assert "".join(fragments) == first + second
    assert fragments[:4] == ["Live ", "speech ", "starts ", "early."]  # word by word
    assert [m["type"] for m in sent][-2:] == ["input.done", "session.close"]
    assert text.get_attribute("readonly") is None and not browser.visible("speech-live-sent")
    assert not browser.by_id("speech-live-done").is_enabled()
    whole = httpx.post(server.url + "/tts", json={"text": first + second, "voice": "alloy",
                                                   "sampling_seed": 1, "format": "pcm",
                                                   "split": "sentence"}, timeout=120)
    assert audio_duration(browser) == pytest.approx(len(whole.content) / 2 / 24000, abs=1e-3)
    assert_clean_console(browser)


def test_live_speech_typed_barge_in(browser: Browser, server: RunningServer) -> None:
    text = start_typing_live(browser, server)
    type_keys(text, f"{LONG_SPEECH}. ")
    browser.wait(lambda d: "first audio" in browser.by_id("speech-meta").text, 60,
                 "the first sentence's audio")
    type_keys(text, "Still typ")
    browser.by_id("speech-barge").click()
    timings = live_timings(browser)
    assert timings["cancelled"] == 1
    assert "barged in after" in browser.by_id("speech-meta").text
    types = [m["type"] for m in browser.js("return sentLog")]
    assert "input.done" not in types and types[-2:] == ["input.cancel", "session.close"]
    type_keys(text, "ping")  # the box is free again
    assert text.get_attribute("value") == f"{LONG_SPEECH}. Still typping"
    assert_clean_console(browser)


def test_live_speech_typed_done_button(browser: Browser, server: RunningServer) -> None:
    text = start_typing_live(browser, server)
    type_keys(text, "Done ends it")
    browser.by_id("speech-live-done").click()  # the last word, unfinished, goes with it
    timings = live_timings(browser)
    assert timings["sentences"] == 1 and timings["cancelled"] == 0
    sent = [m for m in browser.js("return sentLog") if m["type"] != "session.config"]
    assert sent == [{"type": "input.text", "text": "Done "},
                    {"type": "input.text", "text": "ends "},
                    {"type": "input.text", "text": "it"}, {"type": "input.done"},
                    {"type": "session.close"}]
    assert_clean_console(browser)


def test_save_the_current_voice(browser: Browser, server: RunningServer) -> None:
    open_tab(browser, server, "speech")
    choose(browser, "speech-voice", "")
    browser.by_id("speech-seed").send_keys("7")
    browser.by_id("speech-run").click()
    audio_duration(browser)
    browser.by_id("speech-save-name").send_keys("ui-seven")
    browser.by_id("speech-save").click()
    browser.wait(lambda d: "ui-seven" in browser.by_id("speech-save-status").text, 20,
                 "the voice to be saved")
    assert browser.js("return document.getElementById('speech-voice').value") == "ui-seven"
    saved = httpx.get(server.url + "/v1/voices").json()["data"]
    assert any(v["name"] == "ui-seven" and v["seed"] == 7 and v["source"] == "seed"
               for v in saved), saved
    assert_clean_console(browser)


# -- Status ---------------------------------------------------------------------------

def queue_row(browser: Browser, queue: str) -> list[str]:
    cells: list[str] = browser.js(
        "const r = document.querySelector(`#status-queues tr[data-queue='${arguments[0]}']`);"
        "return r ? [...r.children].map(c => c.textContent) : []", queue)
    return cells


def test_status_shows_models_readiness_and_live_queues(
        browser: Browser, server: RunningServer, files: dict[str, Path]) -> None:
    open_tab(browser, server, "status")
    browser.wait(lambda d: browser.js(
        "return document.querySelectorAll('#status-models .model').length") == 3, 20,
        "the model cards")
    models = httpx.get(server.url + "/v1/models").json()["data"]
    for model in models:
        card = browser.js("return document.querySelector(`.model[data-kind='${arguments[0]}']`)"
                          ".textContent", model["kind"])
        assert model["precision"] in card and model["provider"] in card
        assert "random weights" in card  # every demo pack says so
    assert browser.by_id("status-ready").text.startswith("ready")
    browser.wait(lambda d: queue_row(browser, "clap_audio"), 10, "the queue table")
    before = int(queue_row(browser, "clap_audio")[3])
    classify_api(server, files["long"], ["a", "b"])  # 3 windows through the audio batcher
    browser.wait(lambda d: int(queue_row(browser, "clap_audio")[3]) > before, 10,
                 "the live table to count the new batches")
    metrics = httpx.get(server.url + "/metrics").text
    count = next(line for line in metrics.splitlines()
                 if line.startswith('audioserve_batch_size_count{queue="clap_audio"}'))
    assert int(queue_row(browser, "clap_audio")[3]) == int(float(count.split()[-1]))
    browser.screenshot("status")
    assert_clean_console(browser)


# -- all tabs -------------------------------------------------------------------------

CONTROLS_WITHOUT_NAME = """
return [...document.querySelectorAll('input, select, textarea, button, a[href], audio, canvas')]
  .filter(e => e.checkVisibility())
  .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label')
                 || e.textContent.trim() || e.getAttribute('title')))
  .map(e => e.outerHTML.slice(0, 120));
"""


def test_keyboard_and_labelled_controls(browser: Browser, server: RunningServer) -> None:
    from selenium.webdriver.common.keys import Keys

    open_tab(browser, server, "classify")
    for tab in ("classify", "emotion", "speech", "status"):
        browser.by_id(f"tab-{tab}").click()
        assert browser.js(CONTROLS_WITHOUT_NAME) == [], tab
    browser.by_id("tab-classify").click()
    browser.by_id("tab-classify").send_keys(Keys.ARROW_RIGHT)
    assert browser.js("return document.activeElement.id") == "tab-emotion"
    assert browser.visible("panel-emotion") and not browser.visible("panel-classify")
    browser.driver.switch_to.active_element.send_keys(Keys.END)
    assert browser.visible("panel-status")
    browser.driver.switch_to.active_element.send_keys(Keys.HOME)
    assert browser.visible("panel-classify")
    assert browser.driver.current_url.endswith("#classify")
    # labels are chips: Enter adds (commas split), Backspace in the empty entry removes
    entry = browser.by_id("classify-label-entry")
    entry.send_keys("rain on a roof, thunder" + Keys.ENTER)
    chips = browser.js("return [...document.querySelectorAll('#classify-chips .chip span')]"
                       ".map(s => s.textContent)")
    assert chips[-2:] == ["rain on a roof", "thunder"]
    entry.send_keys(Keys.BACKSPACE)
    assert browser.js("return document.querySelectorAll('#classify-chips .chip').length") \
        == len(chips) - 1
    music = browser.driver.find_element("css selector", "[data-preset='music']")
    music.send_keys(Keys.ENTER)  # a focused button activates from the keyboard
    assert browser.js("return document.querySelector('#classify-chips .chip span')"
                      ".textContent") == "a piano"
    assert_clean_console(browser)


def test_phone_width(browser: Browser, server: RunningServer, files: dict[str, Path]) -> None:
    browser.driver.set_window_size(390, 844)
    open_tab(browser, server, "classify")
    browser.by_id("classify-file").send_keys(str(files["long"]))
    browser.by_id("classify-run").click()
    browser.wait(lambda d: browser.visible("classify-heatmap-figure"), 60, "the heat map")
    browser.by_id("tab-emotion").click()
    browser.by_id("emotion-file").send_keys(str(files["speech"]))
    browser.by_id("emotion-run").click()
    browser.wait(lambda d: browser.visible("emotion-timeline-figure"), 60, "the timeline")
    for tab in ("classify", "emotion", "speech", "status"):
        browser.by_id(f"tab-{tab}").click()
        browser.wait(lambda d, tab=tab: browser.visible(f"panel-{tab}"), 20, f"the {tab} tab")
        overflow = browser.js("return document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, f"{tab}: {overflow} px wider than the phone"
        browser.screenshot(f"phone-{tab}")
    assert_clean_console(browser)


def test_page_loads_nothing_from_elsewhere(browser: Browser, server: RunningServer) -> None:
    open_tab(browser, server, "classify")
    names = json.loads(browser.js(
        "return JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))"))
    assert names and all(n.startswith(server.url + "/") for n in names), names
    assert_clean_console(browser)
