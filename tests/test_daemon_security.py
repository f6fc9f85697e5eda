"""Who may talk to the daemon: a non-loopback bind needs CURVE keys (or an explicit --insecure),
and with CURVE on, a client without an authorized key gets no reply at all."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import zmq.auth

from studio.client import DaemonClient, DaemonUnreachable

REPO = Path(__file__).resolve().parents[1]


def run_daemon_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv/bin/python"), "-m", "daemon", *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    made = run_daemon_cli("--make-curve-keys", str(folder))
    assert made.returncode == 0, made.stderr
    return folder


def test_a_non_loopback_bind_without_keys_is_refused_at_startup(tmp_path):
    result = run_daemon_cli("--bind", "0.0.0.0", "--state", str(tmp_path / "state"))
    assert result.returncode == 2
    assert "--curve-dir" in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_non_loopback_bind_serves_without_keys_only_with_insecure(daemon_factory):
    daemon = daemon_factory("--bind", "0.0.0.0", "--insecure")
    assert daemon.client().info().secure is False


def test_with_curve_only_an_authorized_client_gets_replies(daemon_factory, keys, tmp_path):
    daemon = daemon_factory("--require-curve", "--curve-dir", str(keys),
                            client_kwargs={"curve_dir": keys})
    with DaemonClient(daemon.address, timeout=3) as plain:
        with pytest.raises(DaemonUnreachable):
            plain.info()

    stranger = tmp_path / "stranger"                 # a valid key pair the daemon does not know
    stranger.mkdir()
    zmq.auth.create_certificates(str(stranger), "client")
    shutil.copy(keys / "server.key", stranger / "server.key")
    with DaemonClient(daemon.address, timeout=3, curve_dir=stranger) as unknown:
        with pytest.raises(DaemonUnreachable):
            unknown.info()

    with DaemonClient(daemon.address, timeout=30, curve_dir=keys) as authorized:
        info = authorized.info()
        assert info.secure is True
        assert authorized.tts("Hello.", "espeak:en-us").sample_rate > 0


def test_make_curve_keys_refuses_to_overwrite(keys):
    again = run_daemon_cli("--make-curve-keys", str(keys))
    assert again.returncode == 2 and "exists already" in again.stderr
