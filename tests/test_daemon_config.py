"""daemon.config: flags (official names kept) parse into one frozen Settings, and every
impossible combination is refused with a message that says what to change."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from daemon.config import ConfigError, parse_settings
from daemon.keys import make_curve_keys

ONE_RANK = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
TWO_RANKS = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}


def test_defaults_serve_loopback_on_8418_with_one_rank():
    s = parse_settings([], env={})
    assert (s.address, s.world_size, s.frame_num, s.offload_model, s.curve) == \
        ("tcp://127.0.0.1:8418", 1, 81, True, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server_port = 1


def test_official_flag_names_are_accepted():
    s = parse_settings(["--ulysses_size", "2", "--ring_size", "1", "--dit_fsdp", "--t5_fsdp",
                        "--frame_num", "41", "--sample_shift", "5", "--offload_model", "True",
                        "--num_persistent_param_in_dit", "0", "--server_port", "9000"],
                       env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (s.ulysses_size, s.dit_fsdp, s.t5_fsdp, s.frame_num, s.sample_shift, s.offload_model,
            s.num_persistent_param_in_dit, s.server_port, s.rank) == \
        (2, True, True, 41, 5.0, True, 0, 9000, 1)


def test_offloading_defaults_off_with_several_ranks():
    assert parse_settings(["--ulysses_size", "2"], env=TWO_RANKS).offload_model is False


@pytest.mark.parametrize("argv, env, needle", [
    (["--ulysses_size", "2"], ONE_RANK, "--nproc 2"),
    (["--ulysses_size", "2", "--ring_size", "2"], TWO_RANKS, "must be equal"),
    ([], TWO_RANKS, "--ulysses_size 2 --ring_size 1"),
    (["--dit_fsdp"], ONE_RANK, "with one rank"),
    (["--frame_num", "80"], ONE_RANK, "4n+1"),
    (["--sample_shift", "0"], ONE_RANK, "positive"),
    (["--server_port", "70000"], ONE_RANK, "TCP port"),
    (["--insecure", "--require-curve"], ONE_RANK, "contradict"),
    (["--bind", "0.0.0.0"], ONE_RANK, "--curve-dir"),
    (["--bind", "192.168.1.5"], ONE_RANK, "--insecure"),
    (["--fp8", "--dit_fsdp", "--ulysses_size", "2"], TWO_RANKS, "--fp8 does not combine with --dit_fsdp"),
    (["--random_weights", "full", "--lora", "x.safetensors"], ONE_RANK, "drop --lora"),
    (["--random_weights", "tiny", "--backend", "draft"], ONE_RANK, "drop --backend draft"),
])
def test_impossible_settings_are_refused_with_the_fix(argv, env, needle):
    with pytest.raises(ConfigError) as e:
        parse_settings(argv, env=env)
    assert needle in str(e.value)


def test_a_non_loopback_bind_is_allowed_with_insecure_and_then_has_no_curve():
    s = parse_settings(["--bind", "0.0.0.0", "--insecure"], env={})
    assert (s.address, s.curve) == ("tcp://0.0.0.0:8418", False)


def test_curve_needs_the_server_key_and_the_authorized_clients_folder(tmp_path: Path):
    with pytest.raises(ConfigError, match="server.key_secret is missing"):
        parse_settings(["--require-curve", "--curve-dir", str(tmp_path)], env={})
    make_curve_keys(tmp_path / "keys")
    s = parse_settings(["--bind", "0.0.0.0", "--curve-dir", str(tmp_path / "keys")], env={})
    assert s.curve is True


def test_make_curve_keys_writes_both_pairs_and_authorizes_the_client(tmp_path: Path):
    written = make_curve_keys(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "authorized_clients/client.key", "client.key", "client.key_secret", "server.key",
        "server.key_secret"]
    assert (tmp_path / "server.key_secret").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        make_curve_keys(tmp_path)


def test_an_ipv6_loopback_bind_is_bracketed_and_needs_no_keys():
    assert parse_settings(["--bind", "::1"], env={}).address == "tcp://[::1]:8418"
