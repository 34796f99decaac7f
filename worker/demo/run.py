"""The README's quick-start demo: a modify and a dry-run remove, end to end, on local defaults.

Two OpenSSH servers on 127.0.0.1 stand in for the DHCP hosts (sample configs, real
``dhcpd -t``), the worker runs in this process against the local RabbitMQ with the default
topology, and the requests go through the broker exactly as an upstream system sends them.
Everything started here is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from worker.consumer.client import publish_request
from worker.demo import PRIMARY, RELATIONSHIP, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.demo.localhosts import LocalHosts
from worker.messages import MODIFY_COMMAND, REMOVE_COMMAND, Outcome, ResultEvent
from worker.service import serve
from worker.settings import Settings

WAIT_SECONDS = 60.0


def _requests() -> list[tuple[str, str, dict[str, Any]]]:
    run = uuid.uuid4().hex[:8]
    return [
        (
            "modify: shorten MCLT to 1800 s and MaxResponseDelay to 30 s",
            "request.modify",
            {
                "requestId": f"demo-{run}-modify",
                "command": MODIFY_COMMAND,
                "params": {
                    "Name": RELATIONSHIP,
                    "PrimaryServer": PRIMARY,
                    "SecondaryServer": SECONDARY,
                    "Mclt": 1800,
                    "MaxResponseDelay": 30,
                },
                "comment": "demo: shorten MCLT",
            },
        ),
        (
            "remove (dry run): what removing the relationship would change",
            "request.remove",
            {
                "requestId": f"demo-{run}-remove",
                "command": REMOVE_COMMAND,
                "params": {"Server": PRIMARY, "Name": RELATIONSHIP, "DeconfigureAction": "Disable"},
                "dryRun": True,
            },
        ),
    ]


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
    if data.error is not None:
        print(f"error: {data.error.code}: {data.error.message}")
    print("--- the CloudEvent (application/cloudevents+json):")
    print(event.model_dump_json(indent=2))
    sys.stdout.flush()


async def run_demo(workdir: Path | None = None) -> int:
    """Run the demo; 0 when both requests succeeded as expected."""
    with contextlib.ExitStack() as stack:
        base = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dfw-demo-")))
        print(f"starting two local OpenSSH 'DHCP hosts' under {base}", flush=True)
        hosts = stack.enter_context(
            LocalHosts.start(base, sample_configs(), addresses=SAMPLE_ADDRESSES)
        )
        for h in hosts.hosts.values():
            print(f"  {h.name}: ssh 127.0.0.1:{h.port}, config {h.config_path}", flush=True)
        settings = Settings(inventory=hosts.inventory_path)
        stop = asyncio.Event()
        worker = asyncio.create_task(serve(settings, stop), name="worker")
        ok = True
        try:
            for title, key, body in _requests():
                event = await publish_request(settings, body, key, wait=WAIT_SECONDS)
                if event is None:
                    print(f"\n=== {title}\nno result event within {WAIT_SECONDS:.0f}s")
                    ok = False
                    continue
                show(title, event)
                ok = ok and event.data.outcome is Outcome.succeeded
        finally:
            stop.set()
            await asyncio.wait_for(worker, timeout=60)
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
    return 1
