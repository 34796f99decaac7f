"""The README's quick-start demo, run as ``scripts/demo`` runs it: through the real broker.

Both paths: on the lab (a real dhcpd pair, as root with network namespaces) it must show the
pair re-form with the new values; with the lab turned off it must say why and fall back to
the stand-in hosts. Either way it returns 0 only when every request succeeded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.lab import unavailable
from worker.demo.run import LAB_ENV, run_demo
from worker.lab import LabUnavailable
from worker.lab.netns import new_lab_id, probe

pytestmark = pytest.mark.timeout(180)


async def test_the_stand_in_demo_says_why_and_runs_end_to_end(
    amqp_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DHCP_FAILOVER_AMQP_URL", amqp_url)
    monkeypatch.setenv(LAB_ENV, "0")

    assert await run_demo(tmp_path) == 0

    out = capsys.readouterr().out
    assert out.startswith(f"no lab ({LAB_ENV}=0): using two local OpenSSH stand-ins")
    assert "outcome succeeded" in out
    assert "demo finished" in out


async def test_the_lab_demo_shows_the_real_pair_re_form(
    amqp_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        probe(new_lab_id())
    except LabUnavailable as exc:
        unavailable(exc.reason)
    monkeypatch.setenv("DHCP_FAILOVER_AMQP_URL", amqp_url)
    monkeypatch.delenv(LAB_ENV, raising=False)

    assert await run_demo(tmp_path) == 0

    out = capsys.readouterr().out
    assert "no lab" not in out
    assert "pair re-formed: primary normal/normal, secondary normal/normal, mclt 1800" in out
    assert "verified: true" in out
