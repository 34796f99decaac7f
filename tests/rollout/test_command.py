"""``dhcp-failover-worker rollout`` as a subprocess, against the real worker (in this process),
the real broker and 12 pairs of real sshd hosts: the preflight, its confirmation, ``--json``,
``rollout status``, and Ctrl-C (a real SIGINT) at any moment leaving every pair whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.support import assert_depth
from tests.e2e.support import change_ended, slow_restart, worker_env
from tests.fixtures.sshd import LocalHostsFactory
from tests.rollout.conftest import Rig, RigFactory, pair_configs
from worker.demo.localhosts import LocalHosts
from worker.rollout.results import ResultsFile
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

PAIRS = 12
CLI = [sys.executable, "-m", "worker.cli", "rollout"]
CHANGE_FLAGS = ["--mclt", "1800", "--max-response-delay", "30"]


@dataclass
class Ran:
    status: int
    out: str
    err: str

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.splitlines()]


class Command:
    """The rollout command of one test: its environment, inventory and results file."""

    def __init__(self, made: Rig, rollout_id: str) -> None:
        self.made = made
        self.rollout_id = rollout_id
        self.results = made.tmp_path / f"rollout-{rollout_id}.jsonl"
        self.env = worker_env(made.stack.settings)

    def args(self, *extra: str, sub: str = "modify") -> list[str]:
        if sub == "status":
            return [*CLI, "status", self.rollout_id, "--results", str(self.results), *extra]
        return [
            *CLI,
            sub,
            "--inventory",
            str(self.made.hosts.inventory_path),
            "--all",
            *CHANGE_FLAGS,
            "--rollout-id",
            self.rollout_id,
            "--results",
            str(self.results),
            *extra,
        ]

    async def start(self, *extra: str, sub: str = "modify") -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.args(*extra, sub=sub),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.made.tmp_path,
        )

    async def run(self, *extra: str, sub: str = "modify", within: float = 60.0) -> Ran:
        return await finish(await self.start(*extra, sub=sub), within)

    def recorded(self) -> list[str]:
        """The primaries of the pairs with a real result in the results file."""
        return [r["primary"] for r in ResultsFile(self.results).read() if r["record"] == "result"]


async def finish(process: asyncio.subprocess.Process, within: float) -> Ran:
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def worker_idle(made: Rig, quiet: float = 2.0) -> None:
    """Until the worker has published nothing for ``quiet`` seconds and holds no lock: the
    requests a rollout left in flight are done."""
    with contextlib.suppress(TimeoutError):
        while True:
            await made.stack.tap.next(within=quiet)
    await change_ended(*made.hosts.hosts.values())


def untouched(made: Rig, names: Sequence[str] = ()) -> bool:
    hosts = names or list(made.hosts.hosts)
    return all(
        made.host(n).config_sha256() == made.original[n] and not made.host(n).restarts()
        for n in hosts
    )


async def test_preflight_confirmation_json_and_status(rig: RigFactory) -> None:
    made = await rig(PAIRS)
    bad = made.pairs[2]
    secondary = made.host(bad.secondary)
    secondary.config_path.write_text(
        secondary.config_path.read_text().replace("peer port 647;", "peer port 648;")
    )
    made.original[bad.secondary] = secondary.config_sha256()
    command = Command(made, "cmd")

    # --dry-run: only the preflight; the pair whose ports do not mirror is refused.
    dry = await command.run("--dry-run")
    assert dry.status == 2, dry.err
    assert "11 pair(s) would apply, 66 line(s) changed; 1 refused" in dry.err
    shown = next(line for line in dry.err.splitlines() if "port_mismatch │" in line)
    assert "does not match the secondary's 'peer port 648'" in shown  # a pipe: no 80 columns
    assert untouched(made)

    # No terminal to ask on and no --yes: stop after the preflight, nothing changed.
    unconfirmed = await command.run()
    assert unconfirmed.status == 1, unconfirmed.err
    assert "not confirmed: stdin is not a terminal" in unconfirmed.err
    assert untouched(made)

    done = await command.run("--yes", "--json")
    assert done.status == 2, done.err  # the worst outcome: the refused pair
    rows = {str(r["primary"]): r for r in done.lines()}
    assert len(rows) == PAIRS
    refused = rows.pop(bad.primary)
    assert (refused["outcome"], refused["code"], refused["dryRun"]) == (
        "rejected",
        "port_mismatch",
        True,
    )
    assert {r["outcome"] for r in rows.values()} == {"succeeded"}
    assert all(made.changed(p) for p in made.pairs if p != bad)
    assert not made.changed(bad) and untouched(made, [bad.primary, bad.secondary])
    for row in rows.values():
        assert row["requestId"] == f"cmd.dhcp-failover.{row['primary']}"
        assert set(row) >= {"relationship", "secondary", "durationMs", "code"}

    status = await command.run("--json", sub="status")
    assert status.status == 2, status.err
    assert {str(r["primary"]): r["outcome"] for r in status.lines()} == {
        p: r["outcome"] for p, r in [*rows.items(), (bad.primary, refused)]
    }
    table = await command.run(sub="status")
    assert "succeeded" in table.out and "port_mismatch" in table.out


def slow_pairs(seconds: float) -> Callable[[LocalHosts], None]:
    def slow(hosts: LocalHosts) -> None:
        for name in hosts.hosts:
            if name.endswith("a.example.net"):
                slow_restart(hosts, name, seconds)

    return slow


async def interrupt_when(command: Command, results: int, signals: int) -> Ran:
    """Start the rollout, send ``signals`` SIGINTs once ``results`` pairs have a result."""
    process = await command.start("--yes", "--waves", "1,100%", "--concurrency", "3")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while len(command.recorded()) < results:
        assert process.returncode is None, (await finish(process, 5)).err
        assert loop.time() < deadline, "the rollout made no progress"
        await asyncio.sleep(0.02)
    for _ in range(signals):
        process.send_signal(signal.SIGINT)
        await asyncio.sleep(0.05)
    return await finish(process, 30)


@pytest.mark.parametrize("signals", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
async def test_ctrl_c_leaves_every_pair_whole_and_the_rerun_resumes(
    rig: RigFactory, signals: int
) -> None:
    made = await rig(PAIRS, before_worker=slow_pairs(0.4))
    command = Command(made, f"int{signals}")

    stopped = await interrupt_when(command, results=2, signals=signals)

    assert stopped.status == 130, stopped.err
    assert "interrupted" in stopped.err
    recorded = command.recorded()
    await worker_idle(made)
    changed = {p.primary for p in made.pairs if made.changed(p)}  # raises on a half pair
    assert set(recorded) <= changed
    assert len(changed) < PAIRS
    if signals == 1:  # waited for the pairs in flight: each one's outcome is recorded
        assert changed == set(recorded)
    else:  # left the pairs in flight to the worker, which changed them all the same
        assert changed > set(recorded)
    restarts = made.restarts()

    rerun = await command.run("--yes", "--json", within=90)

    assert rerun.status == 0, rerun.err
    rows = {str(r["primary"]): r for r in rerun.lines()}
    assert {r["outcome"] for r in rows.values()} == {"succeeded"}
    assert all(made.changed(p) for p in made.pairs)
    assert {p for p, r in rows.items() if r["resumed"]} == set(recorded)
    for pair in made.pairs:  # changed before the rerun: not restarted by it
        if pair.primary in changed:
            for name in (pair.primary, pair.secondary):
                assert made.restarts()[name] == restarts[name] == 1, name


def on_a_terminal(args: list[str], env: dict[str, str], cwd: Path, answer: str) -> Ran:
    """Run ``args`` with stdin, stdout and stderr on a pseudo-terminal, answering the
    confirmation prompt with ``answer``; what the terminal showed (blocking: run it in a
    thread)."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        args,
        stdin=child,
        stdout=child,
        stderr=child,
        env={**env, "TERM": "xterm", "COLUMNS": "160"},
        cwd=cwd,
        close_fds=True,
    )
    os.close(child)
    shown, answered = b"", False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the child side closed
                    break
                if not chunk:
                    break
                shown += chunk
            if not answered and b"[y/N]" in shown:
                os.write(main, answer.encode() + b"\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        status = process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)
    return Ran(status, shown.decode(errors="replace"), "")


async def test_on_a_terminal_it_asks_and_shows_progress(rig: RigFactory) -> None:
    made = await rig(PAIRS)
    command = Command(made, "tty")
    args = command.args("--waves", "1,5,100%")

    declined = await asyncio.to_thread(on_a_terminal, args, command.env, made.tmp_path, "n")

    assert declined.status == 1, declined.out
    assert "Change 12 pair(s)? [y/N]" in declined.out
    assert "not confirmed; nothing was changed" in declined.out
    assert untouched(made)

    accepted = await asyncio.to_thread(on_a_terminal, args, command.env, made.tmp_path, "y")

    assert accepted.status == 0, accepted.out
    for label in ("preflight (dry runs)", "wave 1/3", "wave 2/3", "wave 3/3", "12/12"):
        assert label in accepted.out
    assert "0 failed, 0 in flight" in accepted.out
    assert all(made.changed(p) for p in made.pairs)


async def test_without_a_worker_the_preflight_says_so_and_times_out(
    local_hosts: LocalHostsFactory, broker_settings: Settings, amqp: AbstractConnection
) -> None:
    configs, addresses = pair_configs(2)
    hosts = local_hosts(configs, addresses=addresses, plain_login=True)
    args = [
        *CLI,
        "modify",
        "--inventory",
        str(hosts.inventory_path),
        "--all",
        *CHANGE_FLAGS,
        "--timeout",
        "1",
        "--yes",
        "--json",
    ]
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=worker_env(broker_settings),
        cwd=hosts.base_dir,
    )
    ran = await finish(process, 60)

    assert ran.status == 124, ran.err
    assert f"no worker consumes {broker_settings.request_queue!r}" in ran.err
    assert "rollout id r" in ran.err  # generated, and printed so it can be resumed
    assert {(r["outcome"], r["dryRun"]) for r in ran.lines()} == {("timeout", True)}
    await assert_depth(amqp, broker_settings.request_queue, 2)  # still queued for a worker
    assert all(not h.restarts() for h in hosts.hosts.values())
