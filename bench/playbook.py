"""``ansible-playbook`` on the rig's hosts: the comparison bench/e2e.py and bench/rollout.py make.

Both run the change an operator would write: ``replace`` with ``validate:`` (the hosts' own
validator, which runs ``dhcpd -t -cf``, as the worker's inventory does), then the restart
script when the file changed; pipelining and ControlPersist on, host keys checked against the
rig's known_hosts, and every SSH master started is told to exit at the end. Install Ansible
with ``.venv/bin/pip install 'ansible-core>=2.16'`` (the ``bench`` extra).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from worker.demo.localhosts import LocalHosts
from worker.transport import load_inventory

#: The change's two tasks, for a play on ``{hosts}``.
TASKS = """\
- hosts: {hosts}
  gather_facts: false
  tasks:
    - name: max-response-delay
      ansible.builtin.replace:
        path: "{{{{ config }}}}"
        regexp: 'max-response-delay \\d+;'
        replace: "max-response-delay {{{{ mrd }}}};"
        validate: "{{{{ validate }}}} %s"
      register: edited
    - name: restart and verify
      ansible.builtin.shell: "{{{{ restart }}}}"
      when: edited is changed
"""


def plays(*groups: str) -> str:
    """A playbook of the change, one play per group, each group done before the next."""
    return "".join(TASKS.format(hosts=g) for g in groups)


@dataclass
class Playbook:
    """A playbook, its inventory and config, ready to run."""

    binary: str
    base: Path
    env: dict[str, str]

    def run(self, **extra_vars: object) -> float:
        """Run it once; its wall seconds (RuntimeError with the output if it failed)."""
        command = [self.binary, "-i", str(self.base / "inventory.ini"), str(self.base / "play.yml")]
        for key, value in extra_vars.items():
            command += ["-e", f"{key}={value}"]
        started = time.perf_counter()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"ansible-playbook failed:\n{done.stdout[-5000:]}\n{done.stderr}")
        return elapsed


def binary() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if found is None:
        raise RuntimeError(
            "ansible-playbook not found (.venv/bin/pip install 'ansible-core>=2.16')"
        )
    return found


@contextmanager
def playbook(
    hosts: LocalHosts,
    workdir: Path,
    text: str,
    groups: Mapping[str, Sequence[str]] | None = None,
    forks: int = 5,
) -> Iterator[Playbook]:
    """``text`` as a playbook on ``hosts`` (``groups``: name -> servers; default every server
    in ``dhcp``), ``forks`` hosts at a time; the ControlPersist masters ended on exit."""
    found = binary()
    base = workdir / "ansible"
    for sub in ("cp", "home", "local-tmp", "remote-tmp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    inventory = load_inventory(hosts.inventory_path)
    lines = []
    for group, members in (groups or {"dhcp": list(inventory.servers)}).items():
        lines.append(f"[{group}]")
        for name in members:
            s = inventory.servers[name]
            restart = s.restart_command + (f" && {s.verify_command}" if s.verify_command else "")
            validate = s.validate_command.replace("{path}", "").strip()
            lines.append(
                f"{name} ansible_host={s.host} ansible_port={s.port} config={s.config_path} "
                f"validate={shlex.quote(validate)} restart={shlex.quote(restart)}"
            )
    first = next(iter(inventory.servers.values()))
    lines += [
        "[all:vars]",
        f"ansible_user={first.username}",
        f"ansible_ssh_private_key_file={first.client_keys[0]}",
        "ansible_ssh_common_args='-F /dev/null "
        f"-o UserKnownHostsFile={first.known_hosts} -o StrictHostKeyChecking=yes'",
        f"ansible_python_interpreter={python}",
    ]
    (base / "inventory.ini").write_text("\n".join(lines) + "\n")
    (base / "play.yml").write_text(text)
    (base / "ansible.cfg").write_text(
        "[defaults]\n"
        f"forks = {forks}\n"
        "host_key_checking = True\n"
        "retry_files_enabled = False\n"
        f"remote_tmp = {base / 'remote-tmp'}\n"
        f"local_tmp = {base / 'local-tmp'}\n"
        "[ssh_connection]\n"
        "pipelining = True\n"
        "ssh_args = -o ControlMaster=auto -o ControlPersist=60s\n"
        f"control_path_dir = {base / 'cp'}\n"
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(base / "ansible.cfg"),
        "ANSIBLE_HOME": str(base / "home"),
        "ANSIBLE_NOCOLOR": "1",
    }
    try:
        yield Playbook(found, base, env)
    finally:
        for socket in (base / "cp").iterdir():  # the ControlPersist masters
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "bench"],
                capture_output=True,
                check=False,
                timeout=10,
            )
