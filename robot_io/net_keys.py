"""CURVE key files of the network arm: one key per file, its 40 Z85 characters and a newline.

`make_keys(dir)` writes a server and a client pair: `server.public`, `server.secret`, `client.public`,
`client.secret` (secrets mode 0600, every file written atomically). The server reads `server.secret`
and `client.public` (the one client it lets in); the client reads `server.public` and `client.secret`.
Reading and checking a key needs no ZeroMQ, so the robot YAML is checked without the `net` extra.
"""

from __future__ import annotations

import os
from pathlib import Path

from pi0edge.atomic import write_text_atomic
from pi0edge.errors import ConfigError, require

KEY_FILES = ("server.public", "server.secret", "client.public", "client.secret")
Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
Z85_KEY_CHARS = 40  # a 32-byte key in Z85


def make_keys(directory: str | Path) -> dict[str, Path]:
    """Write a fresh server and client key pair into `directory`; -> {file name: path}. Never overwrites a key
    (a server's new secret would lock out every client that has the old public key)."""
    zmq = require("zmq", "net", "making network arm keys")
    if not zmq.has("curve"):
        raise ConfigError("this libzmq has no CURVE support; install a pyzmq wheel built with libsodium")
    directory = Path(directory)
    paths = {name: directory / name for name in KEY_FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise ConfigError(f"{', '.join(existing)}: key file(s) exist already; remove them to make new keys")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for side in ("server", "client"):
        public, secret = zmq.curve_keypair()
        write_text_atomic(paths[f"{side}.public"], public.decode() + "\n")
        write_text_atomic(paths[f"{side}.secret"], secret.decode() + "\n", mode=0o600)
    return paths


def read_key(path: str | Path, field: str) -> bytes:
    """The Z85 key in file `path`, or ConfigError naming `field` and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{field}: key file {path} does not exist (make keys with "
                          f"python -m pi0edge.robot_io.net_server --make-keys DIR)")
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{field}: cannot read key file {path}: {exc}") from exc
    if len(key) != Z85_KEY_CHARS or not set(key) <= Z85_ALPHABET:
        raise ConfigError(f"{field}: {path} does not hold a CURVE key ({Z85_KEY_CHARS} Z85 characters)")
    return key.encode()


def server_keys(directory: str | Path) -> tuple[bytes, bytes]:
    """(server secret key, allowed client public key) from a folder made by make_keys."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--keys: {directory} is not a folder (make one with --make-keys {directory})")
    secret = directory / "server.secret"
    if secret.is_file() and os.stat(secret).st_mode & 0o077:
        raise ConfigError(f"--keys: {secret} is readable by other users; chmod 600 {secret}")
    return read_key(secret, "--keys"), read_key(directory / "client.public", "--keys")
