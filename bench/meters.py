"""What the benchmarks read from ``/proc``: CPU seconds by process and for the whole machine,
RSS, the load average. The machine is shared with other jobs, so every figure says whose CPU
it is and what the load was."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from worker.demo.localhosts import LocalHosts

_TICK = os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    """``uptime``'s three load averages: the machine is shared, so every figure carries them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its children it has reaped, so far (0 once it is
    gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / _TICK


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def servers_cpu_seconds(hosts: LocalHosts) -> float:
    """CPU so far of the rig's sshds and everything below them (per-connection sshds, agent
    shells, ``dhcpd -t``, the restart script): each live process with the children it has
    reaped, so each CPU second is counted once while the sshds live. (Their environment
    cannot tell: sshd writes its process title over it.)"""
    roots = {h.process.pid for h in hosts.hosts.values()}
    return sum(cpu_seconds(pid) for pid in descendants(roots))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core, every process) so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / _TICK


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM: the peak RSS so far) of ``pid``, in MB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    rss, hwm = (int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    return rss, hwm


@contextlib.contextmanager
def cpu_meter(
    pids: Mapping[str, int], hosts: LocalHosts | None = None
) -> Iterator[dict[str, float]]:
    """CPU seconds over the block of each named pid, of this process (``bench``), of its
    children that ended in the block (``reaped``: a CLI run), of the rig's servers
    (``servers``) and of the whole machine (``machine``: every process, other users' too);
    ``wall``: seconds."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    servers = servers_cpu_seconds(hosts) if hosts is not None else 0.0
    busy, started, own = machine_busy_seconds(), time.perf_counter(), time.process_time()
    children = _children_cpu()
    spent: dict[str, float] = {}
    try:
        yield spent
    finally:
        spent.update({name: cpu_seconds(pid) - before[name] for name, pid in pids.items()})
        spent["bench"] = time.process_time() - own  # this process alone, not its children
        spent["reaped"] = _children_cpu() - children  # its children that ended meanwhile
        spent["machine"] = machine_busy_seconds() - busy
        spent["wall"] = time.perf_counter() - started
        if hosts is not None:
            spent["servers"] = servers_cpu_seconds(hosts) - servers


def broker_pid() -> int | None:
    """RabbitMQ's ``beam.smp`` on this machine, for its CPU share (None if not found)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
    return None
