"""The lab: a real ISC dhcpd failover pair in two network namespaces, for tests and people.

``with Lab.start(workdir) as lab: lab.wait_normal()`` gives a pair the worker can change over
SSH (``lab.inventory_path``); ``python -m worker.lab up|down|status`` does the same by hand.
"""

from worker.lab.dhcpd import NORMAL, OMAPI_PORT, STATE_NAMES, LabOmapiKey, PairSettings, as_int
from worker.lab.layout import LabServer
from worker.lab.netns import LabError, LabUnavailable
from worker.lab.observe import LabTimeout, States
from worker.lab.pair import Lab

__all__ = [
    "NORMAL",
    "OMAPI_PORT",
    "STATE_NAMES",
    "Lab",
    "LabError",
    "LabOmapiKey",
    "LabServer",
    "LabTimeout",
    "LabUnavailable",
    "PairSettings",
    "States",
    "as_int",
]
