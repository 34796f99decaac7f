"""``python -m worker.lab up|down|status``: the lab pair by hand (``scripts/lab``).

``up`` builds a pair, waits until it is normal, prints the inventory and leaves it running
(state in ``DIR/lab.json``); ``down`` removes exactly that lab; ``down --stale`` also removes
labs whose process died without ``down``; ``status`` lists every lab on this machine.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from worker.lab import dhcpd, registry
from worker.lab.netns import LabError, LabUnavailable
from worker.lab.pair import Lab

DEFAULT_DIR = Path("lab")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a pair, wait until normal, leave it running")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="work dir (default ./lab)")
    up.add_argument("--subnet", help="a free /24 (default: first free of 10.199.0-9.0/24)")
    up.add_argument("--relationship", default="dhcp-failover")
    up.add_argument("--omapi-key", action="store_true", help="dhcpd OMAPI needs an HMAC-MD5 key")
    up.add_argument("--omapi-inventory", action="store_true", help="add [servers.X.omapi]")
    up.add_argument("--timeout", type=float, default=30.0, help="wait for normal/normal (s)")
    down = sub.add_parser("down", help="remove the lab of --dir (and/or stale ones)")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.add_argument("--stale", action="store_true", help="also labs whose process died")
    sub.add_parser("status", help="list labs on this machine, with their states")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            return _down(args.dir, stale=args.stale)
        return _status()
    except LabUnavailable as e:
        print(f"lab unavailable: {e.reason}", file=sys.stderr)
        return 2
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    if (args.dir / registry.STATE_FILE).exists():
        print(f"lab: {args.dir} already holds a lab; run `down --dir {args.dir}` first")
        return 1
    with Lab.start(
        args.dir,
        subnet=args.subnet,
        relationship=args.relationship,
        omapi_key=args.omapi_key,
        omapi_inventory=args.omapi_inventory,
    ) as lab:
        lab.wait_normal(args.timeout)
        lab.detach()
    print(f"inventory: {lab.inventory_path}")
    for s in lab.servers.values():
        print(
            f"  {s.name}: {s.address} (netns {s.namespace})  config {s.config_path}  "
            f"log {s.log_path}"
        )
    print(f"state normal/normal; remove with: scripts/lab down --dir {args.dir}")
    return 0


def _down(directory: Path, *, stale: bool) -> int:
    removed = 0
    if (directory / registry.STATE_FILE).exists():
        lab = Lab.attach(directory)
        lab.stop()
        print(f"removed lab {lab.lab_id} ({directory})")
        removed += 1
    if stale:
        for entry in registry.entries():
            if entry.stale:
                if (entry.workdir / registry.STATE_FILE).exists():
                    Lab.attach(entry.workdir).stop()
                else:  # killed while it was being built: only its names are known
                    namespaces, links = registry.names_of(entry.lab_id)
                    registry.teardown("", namespaces, links, set())
                registry.unregister(entry.lab_id)
                print(f"removed stale lab {entry.lab_id} ({entry.workdir})")
                removed += 1
        namespaces, links = registry.unregistered_names()
        if namespaces or links:
            registry.teardown("", namespaces, links, set())
            print(f"removed unregistered {namespaces + links}")
            removed += 1
    if not removed:
        print(f"no lab state in {directory}" + ("" if stale else " (try --stale)"))
    return 0


def _status() -> int:
    labs = registry.entries()
    if not labs:
        print("no labs")
    for entry in labs:
        namespaces, _ = registry.names_of(entry.lab_id)
        how = "detached" if entry.detached else f"owner pid {entry.owner_pid}"
        if entry.stale:
            how += " (dead: `down --stale` removes it)"
        print(f"lab {entry.lab_id} {entry.subnet} {entry.workdir} {how}")
        state_file = entry.workdir / registry.STATE_FILE
        if namespaces and state_file.exists():
            lab = Lab.attach(entry.workdir)
            for name, value in lab.states().items():
                shown = (
                    "no OMAPI answer" if value is None else "/".join(map(dhcpd.state_name, value))
                )
                print(f"  {name} {lab.servers[name].address}: {shown}")
    orphans = [n for names in registry.unregistered_names() for n in names]
    if orphans:
        print(f"unregistered lab names (`down --stale` removes them): {orphans}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
