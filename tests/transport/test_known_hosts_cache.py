"""known_hosts is parsed once per version of the file (worker/transport/connection.py): a
fleet's connections share one parse, and an operator's edit is seen at the next connect."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

from worker.transport.connection import known_hosts

KEY_A = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
KEY_B = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def test_one_parse_per_version_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:2201 {KEY_A}\n")

    first = known_hosts(path)
    assert known_hosts(path) is first  # the same file: not parsed again

    path.write_text(f"[127.0.0.1]:2201 {KEY_A}\n[127.0.0.1]:2202 {KEY_B}\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = known_hosts(path)

    assert second is not first
    assert second.match("127.0.0.1", "", 2202)[0]  # the new entry is trusted
    assert not first.match("127.0.0.1", "", 2202)[0]
