"""Watching a lab pair: its failover state over OMAPI and its dhcpd logs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from worker.lab import dhcpd
from worker.lab.dhcpd import LabOmapiKey
from worker.lab.layout import LabServer
from worker.lab.netns import LabError

States = Mapping[str, tuple[int, int] | None]
"""Per server: (local-state, partner-state), or None when its OMAPI did not answer."""


class LabTimeout(LabError):
    """The pair did not reach the state waited for; the message has states and log tails."""


class PairObserver:
    """The reading half of :class:`~worker.lab.pair.Lab` (it provides these attributes)."""

    lab_id: str
    relationship: str
    servers: dict[str, LabServer]
    omapi_key: LabOmapiKey | None

    def log_tail(self, server: str, lines: int = 20) -> str:
        path = self.servers[server].log_path
        text = path.read_text(errors="replace") if path.exists() else "(no log yet)"
        return "\n".join(text.splitlines()[-lines:])

    def failover_state(
        self,
        server: str,
        relationship: str | None = None,
        *,
        authenticated: bool = True,
        timeout: float = 2.0,
    ) -> dict[str, bytes]:
        """The raw failover-state object from ``server``'s dhcpd, read from the root namespace.

        Uses the lab's OMAPI key when it has one, unless ``authenticated`` is False. Raises
        what :func:`worker.lab.dhcpd.query_failover_state` raises.
        """
        return dhcpd.query_failover_state(
            self.servers[server].address,
            relationship or self.relationship,
            key=self.omapi_key if authenticated else None,
            timeout=timeout,
        )

    def states(self, relationship: str | None = None) -> dict[str, tuple[int, int] | None]:
        """(local, partner) state of every server; None where OMAPI gave none (no dhcpd
        listening, no such relationship, or a key missing)."""
        import pypureomapi  # type: ignore[import-untyped,unused-ignore]

        out: dict[str, tuple[int, int] | None] = {}
        for name in self.servers:
            try:
                out[name] = dhcpd.states(self.failover_state(name, relationship, timeout=1.0))
            except (OSError, pypureomapi.OmapiError):
                out[name] = None
        return out

    def wait_states(
        self,
        condition: Callable[[States], bool],
        timeout: float,
        *,
        what: str,
        relationship: str | None = None,
        interval: float = 0.1,
    ) -> States:
        """Poll :meth:`states` until ``condition`` holds; :class:`LabTimeout` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.states(relationship)
            if condition(seen):
                return seen
            if time.monotonic() > deadline:
                raise LabTimeout(self._timeout_message(what, timeout, seen))
            time.sleep(interval)

    def wait_normal(self, timeout: float = 30.0, relationship: str | None = None) -> States:
        """Wait until both servers report local and partner state normal."""
        return self.wait_states(
            lambda seen: all(v == (dhcpd.NORMAL, dhcpd.NORMAL) for v in seen.values()),
            timeout,
            what="both servers normal/normal",
            relationship=relationship,
        )

    def _timeout_message(self, what: str, timeout: float, seen: States) -> str:
        def show(v: tuple[int, int] | None) -> str:
            return "no OMAPI answer" if v is None else "/".join(map(dhcpd.state_name, v))

        lines = [f"lab {self.lab_id}: not {what} within {timeout} s"]
        lines += [f"  {name}: {show(v)}" for name, v in seen.items()]
        for name in self.servers:
            lines.append(f"--- {name} dhcpd log ({self.servers[name].log_path}), last lines:")
            lines.append(self.log_tail(name))
        return "\n".join(lines)
