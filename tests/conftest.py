"""Shared fixtures: each area's fixtures live in tests/fixtures/ and are registered here."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins: list[str] = ["tests.fixtures.sshd", "tests.fixtures.broker"]

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "public"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The shared dhcpd.conf corpus (../shared/corpus/public beside the checkout)."""
    if not CORPUS.is_dir():
        pytest.fail(f"corpus not found at {CORPUS}")
    return CORPUS
