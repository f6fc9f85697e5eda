"""CURVE keys for a daemon that other machines may reach (zmq.auth certificate files).

Layout of a keys folder, the same on both sides so one folder works for a local test:
    server.key, server.key_secret      the daemon's pair (clients need server.key)
    client.key, client.key_secret      a client's pair (the daemon needs client.key)
    authorized_clients/*.key           public keys the daemon accepts
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import zmq.auth

from daemon.config import AUTHORIZED_CLIENTS, SERVER_SECRET_KEY


def make_curve_keys(folder: Path) -> list[Path]:
    """Write a server pair and one authorized client pair into `folder`; refuse to overwrite."""
    folder = Path(folder)
    if (folder / SERVER_SECRET_KEY).exists():
        raise FileExistsError(f"{folder / SERVER_SECRET_KEY} exists already; use another folder")
    authorized = folder / AUTHORIZED_CLIENTS
    authorized.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(str(folder), name)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    shutil.copyfile(folder / "client.key", authorized / "client.key")
    written.append(authorized / "client.key")
    return written


def load_server_keys(folder: Path) -> tuple[bytes, bytes]:
    """(public, secret) of the daemon."""
    public, secret = zmq.auth.load_certificate(str(Path(folder) / SERVER_SECRET_KEY))
    if secret is None:
        raise ValueError(f"{Path(folder) / SERVER_SECRET_KEY} holds no secret key")
    return public, secret
