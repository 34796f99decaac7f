"""The README's quick-start demo, end to end on local defaults, through the local RabbitMQ.

Where this machine can run the lab (root, network namespaces: :mod:`worker.lab`), the demo
changes a real ISC dhcpd failover pair and shows it re-form with the new values
(:mod:`worker.demo.on_lab`). Elsewhere it says why, and falls back to the stand-ins: two
OpenSSH servers on 127.0.0.1 with the sample configs and the real ``dhcpd -t``, but no dhcpd
running, so nothing to verify; there it makes a modify and a dry-run remove.
``DHCP_FAILOVER_DEMO_LAB=0`` asks for the stand-ins on a machine that could run the lab.

Either way the worker runs in this process with the default topology, and the requests go
through the broker exactly as an upstream system sends them. Everything started here is
stopped on the way out, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.consumer.client import publish_request
from worker.demo import PRIMARY, RELATIONSHIP, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.demo.localhosts import LocalHosts
from worker.messages import MODIFY_COMMAND, REMOVE_COMMAND, Outcome, ResultEvent, RunningInfo
from worker.service import serve
from worker.settings import Settings

WAIT_SECONDS = 60.0
#: Set to 0 to skip the lab and run the stand-in demo.
LAB_ENV = "DHCP_FAILOVER_DEMO_LAB"

#: (title, routing key, request body) of one demo request.
DemoRequest = tuple[str, str, dict[str, Any]]


def modify_request(
    primary: str, secondary: str, relationship: str = RELATIONSHIP, *, title: str
) -> DemoRequest:
    """The demo's modify: MCLT 1800 s and MaxResponseDelay 30 s on both servers."""
    return (
        title,
        "request.modify",
        {
            "requestId": f"demo-{uuid.uuid4().hex[:8]}-modify",
            "command": MODIFY_COMMAND,
            "params": {
                "Name": relationship,
                "PrimaryServer": primary,
                "SecondaryServer": secondary,
                "Mclt": 1800,
                "MaxResponseDelay": 30,
            },
            "comment": "demo: MCLT 1800 s, MaxResponseDelay 30 s",
        },
    )


def _stand_in_requests() -> list[DemoRequest]:
    return [
        modify_request(
            PRIMARY,
            SECONDARY,
            title="modify: shorten MCLT to 1800 s and MaxResponseDelay to 30 s",
        ),
        (
            "remove (dry run): what removing the relationship would change",
            "request.remove",
            {
                "requestId": f"demo-{uuid.uuid4().hex[:8]}-remove",
                "command": REMOVE_COMMAND,
                "params": {"Server": PRIMARY, "Name": RELATIONSHIP, "DeconfigureAction": "Disable"},
                "dryRun": True,
            },
        ),
    ]


def describe_running(running: RunningInfo) -> str:
    """One server's running values, as a line: ``normal/normal, mclt 1800, ...``."""
    return (
        f"{running.state}/{running.partnerState}, mclt {running.mclt}, "
        f"ports {running.localPort}/{running.partnerPort}, "
        f"max-response-delay {running.maxResponseDelay}, "
        f"max-unacked-updates {running.maxUnackedUpdates}"
    )


def show(title: str, event: ResultEvent) -> None:
    """The event as an audit consumer receives it, with its diffs readable."""
    data = event.data
    print(f"\n=== {title}")
    print(f"event {event.id}  type {event.type}  outcome {data.outcome.value}")
    for server in data.servers:
        print(
            f"--- {server.name} ({server.role}): changed={server.changed} "
            f"state={server.state} restarted={server.restarted}"
        )
        if server.diff:
            print(server.diff, end="" if server.diff.endswith("\n") else "\n")
        if server.running is not None:
            print(
                f"running (OMAPI, read {server.running.model_dump(mode='json')['readAt']}): "
                + describe_running(server.running)
            )
    if data.error is not None:
        print(f"error: {data.error.code}: {data.error.message}")
    print("--- the CloudEvent (application/cloudevents+json):")
    print(event.model_dump_json(indent=2))
    sys.stdout.flush()


async def through_the_queue(
    inventory: Path, requests: Sequence[DemoRequest]
) -> list[ResultEvent | None]:
    """Start the worker on ``inventory``, publish each request and show its event (None:
    none arrived in time); the worker is stopped before this returns."""
    settings = Settings(inventory=inventory)
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(settings, stop), name="worker")
    events: list[ResultEvent | None] = []
    try:
        for title, key, body in requests:
            event = await publish_request(settings, body, key, wait=WAIT_SECONDS)
            if event is None:
                print(f"\n=== {title}\nno result event within {WAIT_SECONDS:.0f}s")
            else:
                show(title, event)
            events.append(event)
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=60)
    return events


async def run_demo(workdir: Path | None = None) -> int:
    """Run the demo (on the lab when it can); 0 when it went as expected."""
    with contextlib.ExitStack() as stack:
        base = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dfw-demo-")))
        why: str | None = f"{LAB_ENV}={os.environ.get(LAB_ENV)}"
        if os.environ.get(LAB_ENV, "").strip().lower() not in ("0", "false", "no"):
            from worker.demo.on_lab import lab_demo

            why, code = await lab_demo(base / "lab")
            if why is None:
                return code
        print(f"no lab ({why}): using two local OpenSSH stand-ins, with no dhcpd to verify")
        return await stand_in_demo(base)
    return 1


async def stand_in_demo(base: Path) -> int:
    """A modify and a dry-run remove on two local sshd stand-ins; 0 when both succeeded."""
    print(f"starting two local OpenSSH 'DHCP hosts' under {base}", flush=True)
    with LocalHosts.start(base, sample_configs(), addresses=SAMPLE_ADDRESSES) as hosts:
        for h in hosts.hosts.values():
            print(f"  {h.name}: ssh 127.0.0.1:{h.port}, config {h.config_path}", flush=True)
        events = await through_the_queue(hosts.inventory_path, _stand_in_requests())
        ok = all(e is not None and e.data.outcome is Outcome.succeeded for e in events)
        live = hosts.hosts[PRIMARY].config_path.read_text()
        print(
            f"\n{PRIMARY} now runs:\n"
            + "".join(
                line
                for line in live.splitlines(keepends=True)
                if line.split()[:1] in (["mclt"], ["max-response-delay"])
            )
        )
    print("demo finished: all processes it started are stopped" if ok else "demo FAILED")
    return 0 if ok else 1
