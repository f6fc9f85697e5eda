"""The Kokoro path, end to end, with a randomly initialized Kokoro-82M built from its real config.

The session fixture writes a weights/Kokoro-82M folder exactly as released (config.json,
kokoro-v1_0.pth with "module."-prefixed keys, voices/<id>.pt tensors [510, 1, 256]) and the
daemon loads it through its own loader. The duration head is pinned so every phoneme lasts
DURATION_FRAMES frames (600 samples each at 24 kHz): audio lengths are then exact and the
decoder stays fast on a CPU. Sockets are blocked and spaCy's model download is booby-trapped
while loading and speaking: nothing may reach the network.
"""
import io
import json
import math
import socket
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from daemon.models.loader import WeightsError
from daemon.tts import TTS
from daemon.tts.kokoro import COMPONENTS, MAX_PHONEMES, KokoroBackend, split_phonemes

# shared/ sits beside the checkout (../shared), in CI too.
FIXTURE_CONFIG = Path(__file__).resolve().parents[2] / "shared/fixtures/kokoro/config.json"
SAMPLES_PER_FRAME = 600
DURATION_FRAMES = 2
MAX_DUR = 50   # config["max_dur"]: the duration head has 50 sigmoid outputs, summed
VOICES = ("af_heart", "zf_xiaoxiao")

pytestmark = pytest.mark.skipif(not FIXTURE_CONFIG.is_file(),
                                reason="shared/fixtures/kokoro/config.json not found")


class NetworkUsed(AssertionError):
    pass


@pytest.fixture(scope="module")
def offline():
    """Fail loudly if anything opens a connection or asks spaCy to download a model.
    Module scope: the guard must be gone before other test modules run."""
    import spacy.cli

    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network access attempted: {args[:2]}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(spacy.cli, "download", refuse)
        yield


def write_random_kokoro(folder: Path, voices=VOICES, frames_per_phoneme=DURATION_FRAMES,
                        random_affines=False) -> None:
    from kokoro import KModel

    config = json.loads(FIXTURE_CONFIG.read_text())
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.manual_seed(0)
    model = KModel(repo_id="hexgrad/Kokoro-82M", config=config, model=empty)
    with torch.no_grad():
        head = model.predictor.duration_proj.linear_layer
        head.weight.zero_()
        # Each of the 50 outputs is sigmoid(bias); their sum is the duration in frames.
        p = frames_per_phoneme / MAX_DUR
        head.bias.fill_(math.log(p / (1 - p)))
        if random_affines:
            # As initialized, every Snake alpha is 1 and every AdaIN instance norm an identity.
            for name, param in model.named_parameters():
                if ".alpha" in name or name.endswith(".norm.weight"):
                    param.uniform_(0.5, 1.5)
                elif name.endswith(".norm.bias"):
                    param.normal_(0.0, 0.5)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    # The release was saved from nn.DataParallel: keys carry "module.".
    torch.save({name: {f"module.{k}": v for k, v in getattr(model, name).state_dict().items()}
                for name in COMPONENTS}, folder / "kokoro-v1_0.pth")
    (folder / "voices").mkdir()
    generator = torch.Generator().manual_seed(1)
    for voice in voices:
        torch.save(torch.randn(510, 1, 256, generator=generator), folder / "voices" / f"{voice}.pt")


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    write_random_kokoro(root / "Kokoro-82M")
    return root


@pytest.fixture(scope="module")
def tts(weights_dir, tmp_path_factory, offline):
    tts = TTS(weights_dir, tmp_path_factory.mktemp("cache"), device="cpu")
    tts.preload()
    return tts


def phoneme_ids(tts: TTS, text: str, voice: str) -> int:
    """How many symbols KModel feeds for `text` (phonemes it has in its vocabulary)."""
    vocab = json.loads(FIXTURE_CONFIG.read_text())["vocab"]
    phonemes = tts._kokoro.phonemize(text, voice)
    return sum(1 for symbol in phonemes if symbol in vocab)


def test_the_network_guard_is_armed(offline):
    import spacy.cli

    with pytest.raises(NetworkUsed):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises(NetworkUsed):
        spacy.cli.download("en_core_web_sm")


def test_model_loads_through_the_daemon_loader_onto_the_device(tts):
    state = tts.info()["backends"]["kokoro"]
    assert state["available"] is True
    assert state["detail"] == "loaded on cpu (81.8 M parameters)"
    assert state["version"] == "kokoro-0.9.4+misaki-0.9.4"


def test_only_voices_with_a_voice_file_are_installed(tts):
    installed = {v.id for v in tts.voices() if v.installed and v.backend == "kokoro"}
    assert installed == {"af_heart", "zf_xiaoxiao"}


def test_english_line_is_spoken_by_kokoro_at_24khz(tts):
    speech = tts.synthesize("Hello there, how are you?", "af_heart")
    assert (speech.backend, speech.voice_used, speech.warning) == ("kokoro", "af_heart", None)
    assert speech.sample_rate == 24_000
    assert speech.samples.dtype == np.float32 and np.max(np.abs(speech.samples)) > 0


def test_audio_length_is_the_predicted_frames_times_600_samples(tts):
    text = "Good morning."
    samples, rate = tts._kokoro.synthesize(text, "af_heart", 1.0)
    # KModel wraps the phonemes in start/end pads: +2 symbols.
    frames = DURATION_FRAMES * (phoneme_ids(tts, text, "af_heart") + 2)
    assert (samples.shape[0], rate) == (frames * SAMPLES_PER_FRAME, 24_000)


def test_speed_two_halves_every_duration(tts):
    text = "Good morning."
    normal, _ = tts._kokoro.synthesize(text, "af_heart", 1.0)
    fast, _ = tts._kokoro.synthesize(text, "af_heart", 2.0)
    assert fast.shape[0] * 2 == normal.shape[0]


def test_mandarin_line_uses_the_offline_chinese_g2p(tts):
    phonemes = tts._kokoro.phonemize("你好，世界。", "zf_xiaoxiao")
    assert "↓" in phonemes          # third-tone mark of misaki's pinyin → IPA
    speech = tts.synthesize("你好，世界。", "zf_xiaoxiao")
    assert (speech.backend, speech.sample_rate) == ("kokoro", 24_000)


def test_english_g2p_keeps_punctuation_and_reads_currency_without_a_spacy_model(tts):
    phonemes = tts._kokoro.phonemize("Well, it costs $3.50!", "af_heart")
    assert phonemes.startswith("wˈɛl,")
    assert "dˈɑləɹz" in phonemes and phonemes.endswith("!")
    notes = tts.info()["backends"]["kokoro"]["notes"]
    assert any("en_core_web_sm is not installed" in note for note in notes)


def test_second_request_is_served_from_the_cache(tts):
    before = tts.stats.synthesized
    first = tts.synthesize("Cache this line.", "af_heart")
    second = tts.synthesize("Cache this line.", "af_heart")
    assert tts.stats.synthesized == before + 1 and second.cached
    np.testing.assert_array_equal(first.samples, second.samples)


def test_kokoro_voice_without_its_file_falls_back_to_an_installed_kokoro_voice(tts):
    speech = tts.synthesize("Hi.", "af_bella")
    assert speech.voice_used == "af_heart"
    assert "voices/af_bella.pt missing — run weights/download.sh kokoro" in speech.warning


def test_japanese_voice_needs_misaki_ja_and_falls_back_to_espeak(tts):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    speech = tts.synthesize("こんにちは", "jf_alpha")
    assert speech.voice_used == "espeak:ja+f3"
    assert "misaki[ja]" in speech.warning


def test_long_text_is_spoken_in_chunks_under_the_context_limit(tts):
    sentence = "This sentence is here to make the line long. "
    phonemes = tts._kokoro.phonemize(sentence * 20, "af_heart")
    assert len(phonemes) > MAX_PHONEMES
    chunks = split_phonemes(phonemes, MAX_PHONEMES)
    assert len(chunks) >= 2 and all(len(c) <= MAX_PHONEMES for c in chunks)
    assert all(c.endswith(".") for c in chunks)


def test_split_prefers_sentence_ends_then_clauses_then_spaces():
    assert split_phonemes("ab. cd. ef", 7) == ["ab. cd.", "ef"]
    assert split_phonemes("ab, cd ef", 6) == ["ab,", "cd ef"]
    assert split_phonemes("abc def", 5) == ["abc", "def"]
    assert split_phonemes("abcdefgh", 3) == ["abc", "def", "gh"]
    assert split_phonemes("   ", 3) == []


# ---------------------------------------------------------------- broken weights


def test_checkpoint_missing_a_component_is_a_weights_error(tmp_path, offline):
    folder = tmp_path / "Kokoro-82M"
    folder.mkdir()
    shutil.copy(FIXTURE_CONFIG, folder / "config.json")
    torch.save({"bert": {}}, folder / "kokoro-v1_0.pth")
    with pytest.raises(WeightsError, match=r"kokoro-v1_0.pth: bert lacks \d+ tensors"):
        KokoroBackend(folder).load()


def test_truncated_checkpoint_makes_tts_fall_back_to_espeak_and_say_why(tmp_path, offline):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    folder = tmp_path / "weights" / "Kokoro-82M"
    (folder / "voices").mkdir(parents=True)
    shutil.copy(FIXTURE_CONFIG, folder / "config.json")
    (folder / "kokoro-v1_0.pth").write_bytes(b"PK\x03\x04 truncated download")
    torch.save(torch.zeros(510, 1, 256), folder / "voices" / "af_heart.pt")
    tts = TTS(tmp_path / "weights", tmp_path / "cache")
    assert "af_heart" in {v.id for v in tts.voices() if v.installed}
    speech = tts.synthesize("Hello.", "af_heart")
    assert speech.voice_used == "espeak:en-us+f3"
    assert "cannot be read as a weights-only checkpoint" in speech.warning
    assert tts.info()["backends"]["kokoro"]["available"] is False


def test_voice_file_of_the_wrong_shape_is_a_weights_error(tmp_path, weights_dir):
    folder = tmp_path / "Kokoro-82M"
    shutil.copytree(weights_dir / "Kokoro-82M" / "voices", folder / "voices")
    torch.save(torch.zeros(510, 256), folder / "voices" / "af_heart.pt")
    with pytest.raises(WeightsError, match=r"af_heart.pt is not a Kokoro voice .*got \(510, 256\)"):
        KokoroBackend(folder)._voice_pack("af_heart")
