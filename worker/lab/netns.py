"""Network namespaces, veths, a bridge and nftables rules: the plumbing under the lab.

Every name carries the lab's prefix (``dfw`` + 6 hex digits), so two labs -- or a lab and the
leftovers of a killed one -- never touch each other's links, and ``ip netns list`` shows at a
glance what belongs to a lab. Nothing here touches an interface or address it did not create.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Every lab name starts with this; ``python -m worker.lab status`` lists them by it.
NAME_PREFIX = "dfw"
#: Shared by all labs on this machine: the registry of running labs and the subnet lock.
RUN_DIR = Path("/run/dhcp-failover-lab")
#: Where labs pick a subnet when the caller names none (first free /24 wins).
AUTO_SUBNETS = tuple(ipaddress.IPv4Network(f"10.199.{n}.0/24") for n in range(10))
#: The nftables table the lab owns inside a namespace (block_port / unblock).
NFT_TABLE = "dfwlab"

IFNAMSIZ = 15


class LabError(RuntimeError):
    """The lab could not be built, queried or torn down; the message says which step."""


class LabUnavailable(LabError):
    """This machine cannot run the lab (not root, no CAP_NET_ADMIN, a tool missing)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    """Run a plumbing command; a failure raises :class:`LabError` naming it and its stderr."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, check=False, timeout=timeout
        )
    except FileNotFoundError as e:
        raise LabUnavailable(f"{argv[0]} not found: {e}") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)} did not finish within {timeout} s") from None
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def require_tools(*names: str) -> dict[str, str]:
    """Absolute paths of the binaries the lab runs, or :class:`LabUnavailable` naming one."""
    found: dict[str, str] = {}
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    for name in names:
        where = shutil.which(name, path=path)
        if where is None:
            raise LabUnavailable(f"{name} not found (scripts/setup installs it)")
        found[name] = str(Path(where).resolve())
    return found


def probe(lab_id: str) -> None:
    """Create and delete a throw-away namespace: the only honest test of CAP_NET_ADMIN."""
    name = f"{NAME_PREFIX}{lab_id}-probe"
    try:
        result = subprocess.run(
            ["ip", "netns", "add", name], capture_output=True, text=True, check=False, timeout=10
        )
    except FileNotFoundError:
        raise LabUnavailable("ip not found (install iproute2)") from None
    if result.returncode != 0:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()} (not root)"
        raise LabUnavailable(f"cannot create a network namespace as {who}: {result.stderr.strip()}")
    run(["ip", "netns", "delete", name], check=False)


def new_lab_id() -> str:
    """Six hex digits not used by any namespace or link on this machine."""
    while True:
        lab_id = secrets.token_hex(3)
        prefix = f"{NAME_PREFIX}{lab_id}"
        if not any(n.startswith(prefix) for n in namespaces() + links()):
            return lab_id


def namespaces() -> list[str]:
    """Names of every network namespace ``ip netns`` knows (ids stripped)."""
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def links() -> list[str]:
    """Names of every link in the root namespace (``veth@peer`` suffixes stripped)."""
    data = json.loads(run(["ip", "-j", "link", "show"]) or "[]")
    return [str(item["ifname"]) for item in data]


def namespace_inode(namespace: str) -> int | None:
    """The netns inode behind a name: processes inside it have the same /proc/PID/ns/net."""
    try:
        return os.stat(f"/run/netns/{namespace}").st_ino
    except OSError:
        return None


def pids_in_namespace(inode: int) -> set[int]:
    """Every process whose network namespace is ``inode`` (what would keep it alive)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    found.add(int(entry.name))
    return found


def netns_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``namespace`` (``ip netns exec`` execs it: same pid)."""
    return ["ip", "netns", "exec", namespace, *argv]


def _check_ifname(name: str) -> str:
    if len(name) > IFNAMSIZ:
        raise LabError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    return name


def add_bridge(name: str, address: ipaddress.IPv4Interface) -> None:
    """A bridge in the root namespace holding ``address``; bridged frames skip iptables.

    ``nf_call_iptables 0`` is a setting of this bridge only: with br_netfilter loaded, a host
    firewall's FORWARD policy would otherwise silently drop traffic between the peers.
    """
    run(["ip", "link", "add", _check_ifname(name), "type", "bridge"])
    run(["ip", "link", "set", name, "type", "bridge", "nf_call_iptables", "0"], check=False)
    run(["ip", "addr", "add", str(address), "dev", name])
    run(["ip", "link", "set", name, "up"])


def add_namespace(
    namespace: str, root_end: str, bridge: str, address: ipaddress.IPv4Interface
) -> None:
    """A namespace whose ``eth0`` holds ``address``; the veth's other end joins ``bridge``."""
    run(["ip", "netns", "add", namespace])
    run(
        [
            "ip", "link", "add", _check_ifname(root_end), "type", "veth",
            "peer", "name", "eth0", "netns", namespace,
        ]
    )  # fmt: skip
    run(["ip", "link", "set", root_end, "master", bridge, "up"])
    run(["ip", "-n", namespace, "addr", "add", str(address), "dev", "eth0"])
    run(["ip", "-n", namespace, "link", "set", "lo", "up"])
    run(["ip", "-n", namespace, "link", "set", "eth0", "up"])


def delete_namespace(namespace: str) -> None:
    """Remove the name (its ``eth0`` and so the veth pair go with the last process in it)."""
    if namespace in namespaces():
        run(["ip", "netns", "delete", namespace])


def delete_link(name: str) -> None:
    if name in links():
        run(["ip", "link", "delete", name])


def block_port(namespace: str, port: int) -> None:
    """Drop every TCP segment to or from ``port`` in ``namespace``, both directions.

    Matching source ports too cuts connections that are already established: a firewall
    that silently drops, so dhcpd notices only after its max-response-delay.
    """
    if port in blocked_ports(namespace):
        return
    rules = (
        f"table inet {NFT_TABLE} {{\n"
        "  chain input { type filter hook input priority 0; policy accept; }\n"
        "  chain output { type filter hook output priority 0; policy accept; }\n"
        "}\n"
        f'add rule inet {NFT_TABLE} input tcp dport {port} drop comment "port {port}"\n'
        f'add rule inet {NFT_TABLE} input tcp sport {port} drop comment "port {port}"\n'
        f'add rule inet {NFT_TABLE} output tcp dport {port} drop comment "port {port}"\n'
        f'add rule inet {NFT_TABLE} output tcp sport {port} drop comment "port {port}"\n'
    )
    _nft(namespace, rules)


def unblock_port(namespace: str, port: int | None = None) -> None:
    """Remove the rules :func:`block_port` added for ``port`` (``None``: all of them)."""
    require_tools("nft")
    if port is None:
        if NFT_TABLE in run(netns_argv(namespace, ["nft", "list", "tables"])).split():
            _nft(namespace, f"delete table inet {NFT_TABLE}\n")
        return
    data = json.loads(
        run(netns_argv(namespace, ["nft", "-j", "-a", "list", "ruleset"]), check=True) or "{}"
    )
    commands = [
        f"delete rule inet {NFT_TABLE} {item['rule']['chain']} handle {item['rule']['handle']}\n"
        for item in data.get("nftables", [])
        if "rule" in item
        and item["rule"].get("table") == NFT_TABLE
        and item["rule"].get("comment") == f"port {port}"
    ]
    if commands:
        _nft(namespace, "".join(commands))


def blocked_ports(namespace: str) -> set[int]:
    """The ports :func:`block_port` currently drops in ``namespace``."""
    require_tools("nft")
    data = json.loads(run(netns_argv(namespace, ["nft", "-j", "list", "ruleset"])) or "{}")
    return {
        int(str(item["rule"]["comment"]).removeprefix("port "))
        for item in data.get("nftables", [])
        if "rule" in item and item["rule"].get("table") == NFT_TABLE
    }


def _nft(namespace: str, script: str) -> None:
    require_tools("nft")
    argv = netns_argv(namespace, ["nft", "-f", "-"])
    result = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"nft in {namespace} failed: {result.stderr.strip()}\n{script}")


# -- choosing a subnet --------------------------------------------------------------------------


@contextlib.contextmanager
def subnet_lock() -> Iterator[None]:
    """Serialise "pick a free /24 and put the bridge address on it" between labs."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with (RUN_DIR / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def subnets_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on a root-namespace interface (no lab may overlap one)."""
    data = json.loads(run(["ip", "-j", "-4", "addr", "show"]) or "[]")
    return [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
        for item in data
        for a in item.get("addr_info", [])
        if a.get("family") == "inet"
    ]


def check_subnet(subnet: ipaddress.IPv4Network) -> None:
    """Refuse a subnet that is not a /24 or overlaps one the machine already uses."""
    if subnet.prefixlen != 24:
        raise LabError(f"the lab needs a /24, not {subnet}")
    for used in subnets_in_use():
        if used.overlaps(subnet):
            raise LabError(f"subnet {subnet} overlaps {used}, already on an interface here")


def pick_subnet() -> ipaddress.IPv4Network:
    """The first of :data:`AUTO_SUBNETS` no interface here uses (call under the lock)."""
    used = subnets_in_use()
    for candidate in AUTO_SUBNETS:
        if not any(u.overlaps(candidate) for u in used):
            return candidate
    raise LabError(f"all of {AUTO_SUBNETS[0]} .. {AUTO_SUBNETS[-1]} are in use by other labs")
