"""The lab itself: a real pair forms, restarts over SSH, breaks behind a firewall, and leaves
nothing behind -- the ground the verify-phase tests stand on."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pypureomapi  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests.fixtures.lab import NORMAL_TIMEOUT, start_lab, unavailable
from tests.transport.support import raw_connection
from worker.demo.processes import alive
from worker.dhcpconf import ConfigSet, check_pair
from worker.lab import (
    NORMAL,
    Lab,
    LabError,
    LabOmapiKey,
    LabTimeout,
    as_int,
    dhcpd,
    netns,
    registry,
)
from worker.transport.inventory import load_inventory

pytestmark = pytest.mark.timeout(120)
COMMS_INTERRUPTED = 3
REPO = Path(__file__).resolve().parents[2]


# -- the pair ----------------------------------------------------------------------------------


def test_pair_forms_normal_with_the_configured_values(lab: Lab) -> None:
    primary = lab.failover_state("primary")
    secondary = lab.failover_state("secondary")
    for raw in (primary, secondary):
        assert dhcpd.states(raw) == (NORMAL, NORMAL)
        assert as_int(raw["local-port"]) == as_int(raw["partner-port"]) == lab.peer.port
        assert as_int(raw["max-response-delay"]) == lab.peer.max_response_delay
        assert as_int(raw["max-outstanding-updates"]) == lab.peer.max_unacked_updates
    assert (as_int(primary["hierarchy"]), as_int(secondary["hierarchy"])) == (0, 1)
    # The secondary adopts the primary's MCLT from the CONNECT message.
    assert as_int(primary["mclt"]) == as_int(secondary["mclt"]) == lab.peer.mclt


def test_inventory_names_the_live_configs_and_the_worker_accepts_the_pair(lab: Lab) -> None:
    inventory = load_inventory(lab.inventory_path, check_files=True)
    assert set(inventory.servers) == {"primary", "secondary"}
    for name, entry in inventory.servers.items():
        server = lab.servers[name]
        assert entry.host == server.address
        assert Path(entry.config_path) == server.config_path
        assert shlex.split(entry.restart_command) == [str(server.restart_script)]
    assert "omapi" not in tomllib.loads(lab.inventory_path.read_text())["servers"]["primary"]
    sets = {
        n: ConfigSet.parse({str(s.config_path): s.config_path.read_text()}, str(s.config_path))
        for n, s in lab.servers.items()
    }
    check_pair(sets["primary"], sets["secondary"], lab.relationship)
    try:
        lab.write_inventory(omapi=True)
        entry = load_inventory(lab.inventory_path, check_files=True).servers["secondary"]
        assert entry.omapi is not None and entry.omapi.none and entry.omapi.port == 7911
    finally:
        lab.write_inventory(omapi=False)


async def test_restart_command_over_ssh_restarts_that_peer(lab: Lab) -> None:
    entry = load_inventory(lab.inventory_path).servers["secondary"]
    old = lab.servers["secondary"].dhcpd_pid
    other = lab.servers["primary"].dhcpd_pid
    assert old is not None
    async with await raw_connection(entry) as conn:
        validated = await conn.run(entry.validate_command.format(path=entry.config_path))
        assert validated.exit_status == 0, validated.stderr
        result = await conn.run(entry.restart_command)
        assert result.exit_status == 0, result.stderr
    await asyncio.sleep(1.0)  # the new dhcpd outlives the SSH session that started it
    new = lab.servers["secondary"].dhcpd_pid
    assert new is not None and new != old
    assert lab.servers["primary"].dhcpd_pid == other
    assert f"pid {new}" in str(result.stdout)
    await asyncio.to_thread(lab.wait_normal, 10.0)


async def test_omapi_through_an_ssh_port_forward(lab: Lab) -> None:
    """What the worker's OMAPI adapter does: 127.0.0.1:7911 on the server, over SSH."""
    entry = load_inventory(lab.inventory_path).servers["primary"]
    async with await raw_connection(entry) as conn:
        listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", dhcpd.OMAPI_PORT)
        raw = await asyncio.to_thread(
            dhcpd.query_failover_state, "127.0.0.1", lab.relationship, port=listener.get_port()
        )
        listener.close()
    assert as_int(raw["hierarchy"]) == 0
    assert dhcpd.states(raw) == (NORMAL, NORMAL)


def test_a_bounded_wait_fails_with_the_states_and_both_dhcpd_logs(lab: Lab) -> None:
    with pytest.raises(LabTimeout) as caught:
        lab.wait_normal(0.3, relationship="no-such-relationship")
    message = str(caught.value)
    assert "not both servers normal/normal within 0.3 s" in message
    assert "primary: no OMAPI answer" in message and "secondary: no OMAPI answer" in message
    for server in lab.servers.values():
        assert f"--- {server.name} dhcpd log ({server.log_path})" in message
        assert lab.log_tail(server.name) in message
    assert "Both servers normal" in message


def test_restart_script_fails_when_the_new_dhcpd_dies_at_once(lab: Lab) -> None:
    server = lab.servers["secondary"]
    server.config_path.write_text(server.config_path.read_text().replace("}", "", 1))
    try:
        with pytest.raises(LabError, match="exited at once") as caught:
            lab.restart_dhcpd("secondary")
        assert "Configuration file errors encountered" in str(caught.value)
        assert server.dhcpd_pid is None
    finally:
        lab.reset(NORMAL_TIMEOUT)
    assert server.dhcpd_pid is not None


def test_restart_script_waits_for_a_slow_dhcpd_to_write_its_pid_file(tmp_path: Path) -> None:
    """dhcpd writes its pid file only once its config, leases and interfaces are set up; on a
    busy machine that is later than the script's 0.5 s check (seen in CI). A stand-in that
    takes 1.5 s runs the real script, outside any namespace."""
    pid_file = tmp_path / "dhcpd.pid"
    slow = tmp_path / "dhcpd"
    slow.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != -pf ]; do shift; done\n'
        "sleep 1.5\n"
        'echo $$ > "$2"\n'
        "exec sleep 30\n"
    )
    slow.chmod(0o755)
    script = tmp_path / "restart.sh"
    script.write_text(
        dhcpd.restart_script(
            str(slow), tmp_path / "conf", tmp_path / "leases", pid_file, tmp_path / "log"
        )
    )
    result = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=30)
    started = result.stdout.rpartition("pid ")[2].strip()
    try:
        assert result.returncode == 0, result.stderr
        assert pid_file.read_text().strip() == started
    finally:
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(started), signal.SIGKILL)


def test_killed_peer_leaves_the_other_interrupted_until_restarted(lab: Lab) -> None:
    killed = lab.kill_dhcpd("secondary")
    assert killed is not None and lab.servers["secondary"].dhcpd_pid is None
    seen = lab.wait_states(
        lambda s: (
            s["secondary"] is None
            and s["primary"] is not None
            and s["primary"][0] == COMMS_INTERRUPTED
        ),
        30.0,
        what="primary communications-interrupted",
    )
    assert seen["primary"] is not None and seen["primary"][0] == COMMS_INTERRUPTED
    lab.reset(NORMAL_TIMEOUT)  # restarts the dead peer
    assert lab.servers["secondary"].dhcpd_pid not in (None, killed)


def test_firewall_breaks_the_pair_and_unblocking_restores_it(lab: Lab) -> None:
    port = lab.peer.port
    lab.block_port("secondary", port)
    try:
        assert lab.blocked_ports("secondary") == {port}
        assert lab.blocked_ports("primary") == set()
        lab.wait_states(
            lambda s: all(v is not None and v[0] != NORMAL for v in s.values()),
            lab.peer.max_response_delay * 4 + 10,
            what="both out of normal behind the firewall",
        )
    finally:
        lab.unblock("secondary", port)
    assert lab.blocked_ports("secondary") == set()
    lab.wait_normal(60.0)


def test_a_client_on_the_bridge_gets_a_lease_from_the_pair(lab: Lab) -> None:
    lease = lab.dhcp_lease("client")
    pool = [ipaddress.IPv4Address(a) for a in (lab.subnet[100], lab.subnet[199])]
    assert pool[0] <= ipaddress.IPv4Address(lease["fixed-address"]) <= pool[1]
    servers = {s.address for s in lab.servers.values()}
    assert lease["dhcp-server-identifier"] in servers
    assert lab.clients["client"] in netns.namespaces()
    # A first lease under failover is at most the MCLT long.
    assert int(lease["dhcp-lease-time"]) <= lab.peer.mclt


# -- OMAPI keys --------------------------------------------------------------------------------


@pytest.mark.integration
def test_keyed_omapi_answers_only_with_the_key(tmp_path: Path) -> None:
    with start_lab(tmp_path, omapi_key=True, omapi_inventory=True) as keyed:
        assert keyed.omapi_key is not None and keyed.omapi_secret_file is not None
        assert keyed.omapi_secret_file.read_text().strip() == keyed.omapi_key.secret
        assert (
            f"omapi-key {keyed.omapi_key.name};" in keyed.servers["primary"].config_path.read_text()
        )
        keyed.wait_states(lambda s: all(v is not None for v in s.values()), 15.0, what="OMAPI")
        address = keyed.servers["primary"].address
        assert dhcpd.states(keyed.failover_state("primary"))[0] > 0
        # No key: dhcpd answers as if there were no such object.
        with pytest.raises(pypureomapi.OmapiErrorNotFound):
            keyed.failover_state("primary", authenticated=False)
        with pytest.raises(pypureomapi.OmapiError, match="wrong authenticator"):
            dhcpd.query_failover_state(address, keyed.relationship, key=LabOmapiKey.generate())
        tables = tomllib.loads(keyed.inventory_path.read_text())["servers"]
        assert tables["secondary"]["omapi"] == {
            "port": 7911,
            "key_name": keyed.omapi_key.name,
            "key_secret_file": str(keyed.omapi_secret_file),
        }
        # The worker's inventory takes these tables as they are.
        entry = load_inventory(keyed.inventory_path, check_files=True).servers["primary"]
        assert entry.omapi is not None and entry.omapi.key_name == keyed.omapi_key.name
        keyed.write_inventory(omapi=False)
        assert "omapi" not in tomllib.loads(keyed.inventory_path.read_text())["servers"]["primary"]


# -- nothing left behind -------------------------------------------------------------------------


def _owned(lab_prefix: str) -> tuple[list[str], list[str]]:
    return (
        [n for n in netns.namespaces() if n.startswith(lab_prefix)],
        [n for n in netns.links() if n.startswith(lab_prefix)],
    )


def _processes_of(lab: Lab) -> set[int]:
    """Every process inside the lab's namespaces: what teardown must end."""
    inodes = [netns.namespace_inode(n) for n in lab.namespaces]
    return {p for i in inodes if i is not None for p in netns.pids_in_namespace(i)}


@pytest.mark.integration
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_the_body_leaves_no_namespace_link_or_process(
    tmp_path: Path, error: type[BaseException]
) -> None:
    namespaces_before, links_before = set(netns.namespaces()), set(netns.links())
    with pytest.raises(error), start_lab(tmp_path) as lab:
        lab.add_client("client")
        inside = _processes_of(lab)
        assert len(inside) >= 4  # sshd and dhcpd in each server's namespace
        assert len(lab.namespaces) == 3 and len(lab.links) == 4  # + the client's
        namespaces, links = _owned(lab.prefix)
        assert (sorted(namespaces), sorted(links)) == (sorted(lab.namespaces), sorted(lab.links))
        raise error("the test body failed")
    assert _owned(lab.prefix) == ([], [])
    assert not [p for p in inside if alive(p)]
    # Other labs (other test runs) may come and go meanwhile: compare only what is ours.
    new_namespaces = set(netns.namespaces()) - namespaces_before
    new_links = set(netns.links()) - links_before
    assert not {n for n in new_namespaces | new_links if n.startswith(lab.prefix)}
    assert lab.lab_id not in {e.lab_id for e in registry.entries()}
    assert not lab.state_file.exists()


@pytest.mark.integration
def test_a_failing_start_undoes_what_it_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids: list[str] = []
    new_lab_id = netns.new_lab_id

    def recording() -> str:
        ids.append(new_lab_id())
        return ids[-1]

    monkeypatch.setattr(netns, "new_lab_id", recording)
    # Fails after the bridge and the first namespace exist: rendering the first config.
    with pytest.raises(ValueError, match="cannot be written"):
        start_lab(tmp_path, relationship='bad"name')
    (lab_id,) = ids
    assert _owned(f"{netns.NAME_PREFIX}{lab_id}") == ([], [])
    assert lab_id not in {e.lab_id for e in registry.entries()}


@pytest.mark.integration
def test_sigterm_tears_the_lab_down(tmp_path: Path) -> None:
    script = (
        "import json, sys, time\n"
        "from worker.lab import Lab\n"
        "with Lab.start(sys.argv[1]) as lab:\n"
        "    pids = [p for s in lab.servers.values() for p in (s.dhcpd_pid, s.sshd_pid)]\n"
        "    print(json.dumps({'prefix': lab.prefix, 'pids': pids}), flush=True)\n"
        "    time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                err = process.communicate(timeout=30)[1]
                if "LabUnavailable" in err:
                    unavailable(err.strip().splitlines()[-1])
                pytest.fail(f"the lab did not start: {err}")
            started = json.loads(line)
            assert all(alive(p) for p in started["pids"])
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode != 0  # KeyboardInterrupt, after the with block tore down
    assert _owned(started["prefix"]) == ([], [])
    assert not [p for p in started["pids"] if alive(p)]


# -- the script for people ----------------------------------------------------------------------


@pytest.mark.integration
def test_script_up_status_down(tmp_path: Path) -> None:
    workdir = tmp_path / "lab"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / "scripts" / "lab"), *args],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    up = run("up", "--dir", str(workdir))
    if up.returncode == 2 and "lab unavailable" in up.stderr:
        unavailable(up.stderr.strip())
    assert up.returncode == 0, up.stderr
    assert f"inventory: {workdir / 'inventory.toml'}" in up.stdout
    lab = Lab.attach(workdir)
    try:
        assert sorted(_owned(lab.prefix)[0]) == sorted(lab.namespaces)  # still there after `up`
        lab.wait_normal(10.0)
        status = run("status")
        assert f"lab {lab.lab_id}" in status.stdout and "detached" in status.stdout
        assert f"primary {lab.servers['primary'].address}: normal/normal" in status.stdout
        pids = [p for s in lab.servers.values() for p in (s.dhcpd_pid, s.sshd_pid) if p]
        down = run("down", "--dir", str(workdir))
        assert down.returncode == 0, down.stderr
        assert f"removed lab {lab.lab_id}" in down.stdout
    finally:
        lab.stop()  # a no-op after `down`; the clean-up if the test failed before it
    assert _owned(lab.prefix) == ([], [])
    assert not [p for p in pids if alive(p)]
    assert not (workdir / registry.STATE_FILE).exists()


# -- where the lab cannot run -------------------------------------------------------------------


def test_unavailable_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no CAP_NET_ADMIN"):
        unavailable("no CAP_NET_ADMIN")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no CAP_NET_ADMIN"):
        unavailable("no CAP_NET_ADMIN")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_probe_as_an_unprivileged_user_raises_lab_unavailable() -> None:
    # The checkout and its venv may sit in a directory only root can enter (CI's mktemp -d):
    # netns.py needs only the standard library, so the other user runs a world-readable copy
    # of it with the system Python.
    code = (
        "from netns import LabUnavailable, probe\n"
        "try:\n    probe('probe0')\n"
        "except LabUnavailable as e:\n    print('unavailable:', e.reason)\n"
    )
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    with tempfile.TemporaryDirectory() as copy:
        os.chmod(copy, 0o755)
        shutil.copy(REPO / "worker" / "lab" / "netns.py", Path(copy) / "netns.py")
        os.chmod(Path(copy) / "netns.py", 0o644)
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=copy,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            check=False,
        )
    assert "unavailable: cannot create a network namespace as uid 65534 (not root)" in (
        result.stdout
    ), result.stderr
