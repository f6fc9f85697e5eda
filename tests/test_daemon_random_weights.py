"""`--random_weights`: the daemon serves full renders from random models of the released (or
tiny) sizes without any weight file — how speed and memory are measured on GPU machines that
cannot download the weights. The state says so wherever a user looks."""
from __future__ import annotations

import torch

from daemon.backends import select_backends
from daemon.config import parse_settings
from daemon.control import Control, Runtime
from daemon.pipeline.multitalk import MultiTalkBackend
from daemon.tts import TTS


def test_random_tiny_weights_give_a_ready_multitalk_backend_marked_as_noise(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    settings = parse_settings(["--random_weights", "tiny", "--weights", str(empty),
                               "--state", str(tmp_path / "state")], env={})
    runtime = Runtime(0, 1, torch.device("cpu"), Control(0, 1, None))
    backends = select_backends(settings, runtime, TTS(empty, tmp_path / "tts-cache"))
    backend = backends.for_mode("full")
    assert isinstance(backend, MultiTalkBackend)
    state = backend.state()
    assert state.state == "ready" and state.detail.startswith("RANDOM WEIGHTS (renders are noise)")
    assert backend.pipeline.models.identity == "random:tiny:0"


def test_without_the_flag_an_empty_weights_folder_offers_drafts_only(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    settings = parse_settings(["--weights", str(empty), "--state", str(tmp_path / "state")], env={})
    runtime = Runtime(0, 1, torch.device("cpu"), Control(0, 1, None))
    backends = select_backends(settings, runtime, TTS(empty, tmp_path / "tts-cache"))
    assert [s.state for s in backends.states()] == ["ready", "unavailable"]
