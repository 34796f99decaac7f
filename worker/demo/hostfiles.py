"""The files of one stand-in DHCP host (``worker.demo.localhosts``): its ``sshd_config`` and the
three commands its inventory entry runs (``bin/validate.sh``, ``restart.sh``, ``verify.sh``)."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from worker.demo.processes import LocalHostsError, sshd_options


def write_sshd_config(
    root: Path,
    port: int,
    host_key: Path,
    token: str,
    home: Path | None = None,
    listen: Sequence[str] = ("127.0.0.1",),
) -> Path:
    """A stand-in host's ``sshd_config``: key login only, every session tagged with ``token``."""
    path = root / "sshd_config"
    lines = [
        f"Port {port}",
        *(f"ListenAddress {address}" for address in listen),
        f"HostKey {host_key}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "PermitRootLogin yes",
        *sshd_options(token, home),
    ]
    path.write_text("\n".join([*lines, ""]))
    return path


def write_scripts(root: Path, config_path: Path, hang_seconds: int) -> None:
    """The inventory's validate, restart and verify commands of a stand-in host, in ``bin/``."""
    dhcpd = shutil.which("dhcpd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if dhcpd is None:
        raise LocalHostsError("dhcpd not found (install isc-dhcp-server)")
    q = shlex.quote
    scripts = {
        "validate.sh": f"""#!/bin/sh
# dhcpd -t -cf PATH, unless the fail-validate marker asks for a dhcpd-style failure.
if [ -e {q(str(root / "fail-validate"))} ]; then
    echo "$1 line 1: forced failure (fail-validate marker)" >&2
    echo "^" >&2
    echo "Configuration file errors encountered -- exiting" >&2
    exit 1
fi
exec {q(dhcpd)} -t -cf "$1"
""",
        "restart.sh": f"""#!/bin/sh
# Stand-in for `systemctl restart isc-dhcp-server`: log each attempt, fail or hang on demand.
log={q(str(root / "restart.log"))}
conf={q(str(config_path))}
sum=$(sha256sum < "$conf" | cut -d' ' -f1)
if [ -e {q(str(root / "hang-restart"))} ]; then
    echo "hung $sum" >> "$log"
    sleep {int(hang_seconds)}
    exit 1
fi
if [ -e {q(str(root / "fail-restart"))} ] || ! {q(dhcpd)} -t -q -cf "$conf" 2>/dev/null; then
    echo "failed $sum" >> "$log"
    echo "Job for isc-dhcp-server.service failed because the control process exited" >&2
    exit 1
fi
echo "ok $sum" >> "$log"
""",
        "verify.sh": f"""#!/bin/sh
# Stand-in for `systemctl is-active isc-dhcp-server`.
if [ -e {q(str(root / "fail-verify"))} ]; then echo failed; exit 3; fi
echo active
""",
    }
    for name, text in scripts.items():
        path = root / "bin" / name
        path.write_text(text)
        path.chmod(0o755)
