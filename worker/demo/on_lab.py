"""The demo on the lab: a real dhcpd failover pair changed through the queue, and verified.

The worker changes MCLT and MaxResponseDelay on both peers, restarts them one after the other
and reads each dhcpd over OMAPI (through its SSH connection) until the pair is normal again
with the new values; the event carries what it read. Then the demo reads both dhcpds itself,
straight from this shell, and shows what each logged about its peer since its restart, so a
newcomer sees the pair re-form from dhcpd's side too, not only the worker's.
"""

from __future__ import annotations

import time
from pathlib import Path

from worker.demo.run import modify_request, through_the_queue
from worker.lab import NORMAL, Lab, LabError, LabUnavailable, as_int, dhcpd
from worker.messages import Outcome, ResultEvent

FORM_TIMEOUT = 30.0  # a cold pair is normal within ~10 s
MCLT, MRD = 1800, 30  # what modify_request sets


async def lab_demo(workdir: Path) -> tuple[str | None, int]:
    """Run the demo on a new lab: ``(None, exit code)``; ``(why, 1)`` when no lab could be
    built here (nothing left behind), so the caller can fall back to the stand-ins."""
    started = time.monotonic()
    try:
        lab = Lab.start(workdir, omapi_inventory=True)
    except LabUnavailable as e:
        return e.reason, 1
    except LabError as e:
        return f"the lab did not start: {_first_line(e)}", 1
    with lab:
        print(
            "the lab: a real ISC dhcpd failover pair in two network namespaces "
            f"({lab.subnet}, under {lab.workdir})"
        )
        for s in lab.servers.values():
            print(
                f"  {s.name}: {s.address} in netns {s.namespace}: dhcpd (OMAPI :"
                f"{dhcpd.OMAPI_PORT}) and sshd; config {s.config_path}"
            )
        try:
            lab.wait_normal(FORM_TIMEOUT)
        except LabError as e:
            return f"the lab's pair did not form: {_first_line(e)}", 1
        took = time.monotonic() - started
        print(f"pair normal/normal {took:.1f} s after the lab began to start", flush=True)
        peer = lab.peer
        title = (
            f"modify: MCLT {peer.mclt} -> {MCLT} s, MaxResponseDelay {peer.max_response_delay}"
            f" -> {MRD} s, verified on the running pair"
        )
        request = modify_request("primary", "secondary", lab.relationship, title=title)
        (event,) = await through_the_queue(lab.inventory_path, [request])
        ok = event is not None and _reformed(event)
        print()
        if event is not None:
            print(summary(event))
        if ok:
            _show_from_dhcpd(lab)
        print(
            "demo finished: the lab's namespaces, links and processes are removed"
            if ok
            else "demo FAILED"
        )
    return None, 0 if ok else 1


def _reformed(event: ResultEvent) -> bool:
    data = event.data
    return (
        data.outcome is Outcome.succeeded
        and data.verified
        and all(
            s.running is not None
            and (s.running.state, s.running.partnerState) == ("normal", "normal")
            and (s.running.mclt, s.running.maxResponseDelay) == (MCLT, MRD)
            for s in data.servers
        )
    )


def summary(event: ResultEvent) -> str:
    """The short human line: did the pair re-form, and with which values."""
    data = event.data
    readings = [(s.name, s.running) for s in data.servers]
    if data.outcome is not Outcome.succeeded or any(r is None for _, r in readings):
        error = f": {data.error.code}: {data.error.message}" if data.error else ""
        return f"the pair was not verified ({data.outcome.value}){error}"
    states = ", ".join(f"{name} {r.state}/{r.partnerState}" for name, r in readings if r)
    mclts = "/".join(sorted({str(r.mclt) for _, r in readings if r}))
    mrds = "/".join(sorted({str(r.maxResponseDelay) for _, r in readings if r}))
    return (
        f"pair re-formed: {states}, mclt {mclts}, max-response-delay {mrds} "
        f"(verified: {str(data.verified).lower()}, {data.verifyMs} ms of OMAPI reads after "
        "the restarts)"
    )


def _show_from_dhcpd(lab: Lab) -> None:
    """Both dhcpds read from this shell (not through the worker), and their peer log lines."""
    import pypureomapi  # type: ignore[import-untyped,unused-ignore]

    print("read again from this shell, straight from each dhcpd's OMAPI:")
    for name in lab.servers:
        try:
            raw = lab.failover_state(name)
        except (OSError, pypureomapi.OmapiError) as e:
            print(f"  {name}: no answer ({type(e).__name__}: {e})")
            continue
        local, partner = (dhcpd.state_name(s) for s in dhcpd.states(raw))
        mark = "" if dhcpd.states(raw) == (NORMAL, NORMAL) else "  (not normal)"
        print(
            f"  {name}: {local}/{partner}, mclt {as_int(raw['mclt'])}, "
            f"max-response-delay {as_int(raw['max-response-delay'])}{mark}"
        )
    print("what each dhcpd logged about its peer since its restart:")
    for name, server in lab.servers.items():
        text = server.log_path.read_text(errors="replace")
        since = text.rsplit("--- worker.lab restart", 1)[-1].splitlines()
        lines = [line for line in since if "failover peer" in line or line.startswith("peer ")]
        for line in lines[-12:]:
            print(f"  {name}: {line}")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


__all__ = ["lab_demo", "summary"]
