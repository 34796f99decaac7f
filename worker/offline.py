"""Offline commands (CONTRACT §5): ``plan`` a request on local copies, ``inspect`` a config.

Nothing here talks to a server or a broker: it reads local files, runs the same pure planner
the worker runs, and (where ``dhcpd`` is on PATH) the same ``dhcpd -t`` validation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.change.plan import ServerPlan, plan_modify, plan_remove
from worker.dhcpconf import ConfigSet, include_paths, parse_dhcpd_output, rewrite_includes
from worker.errors import ConfigError, ValidationFailed, WorkerError
from worker.messages import ErrorInfo, ModifyRequest, Phase, RemoveRequest, parse_request

ENCODING = "utf-8"
ERRORS = "surrogateescape"
MAX_INCLUDE_DEPTH = 8

EXIT_OK = 0
EXIT_REJECTED = 2


def decode(data: bytes) -> str:
    return data.decode(ENCODING, ERRORS)


def encode(text: str) -> bytes:
    return text.encode(ENCODING, ERRORS)


def resolve_include(path: str, main: Path) -> Path:
    """dhcpd opens relative includes from its working directory; we take the main file's."""
    p = Path(path)
    return p if p.is_absolute() else main.parent / p


def load_local(main: Path, warnings: list[str]) -> ConfigSet:
    """Parse a local config and the files it includes; missing includes are warned about."""
    files: dict[str, str] = {}
    pending: list[tuple[Path, int]] = [(main, 0)]
    while pending:
        path, depth = pending.pop()
        key = str(path)
        if key in files:
            continue
        try:
            text = decode(path.read_bytes())
        except FileNotFoundError:
            if depth == 0:
                raise
            warnings.append(f"included file {path} not found; planned without it")
            continue
        files[key] = text
        if depth < MAX_INCLUDE_DEPTH:
            for inc in include_paths(text, key):
                pending.append((resolve_include(inc, main), depth + 1))
    return ConfigSet.parse(files, str(main))


@dataclass(frozen=True)
class PlanOutput:
    plans: list[ServerPlan]
    labels: dict[str, str]  # server -> output label ("primary" / "secondary")
    warnings: list[str]


def plan_request(
    request: ModifyRequest | RemoveRequest, primary: Path, secondary: Path
) -> PlanOutput:
    """Apply a request to local copies; raises ``Rejected`` subclasses."""
    warnings: list[str] = []
    pcs = load_local(primary, warnings)
    scs = load_local(secondary, warnings)
    if isinstance(request, ModifyRequest):
        p, s = plan_modify(request.params, pcs, scs)
        return PlanOutput([p, s], {p.server: "primary", s.server: "secondary"}, warnings)
    # Offline there is no inventory: the two files *are* the pair, labelled by role, and
    # ``Server`` only says which side the request came from.
    params = request.params.model_copy(update={"server": "primary"})
    pairs = {name: ("primary", "secondary") for name in params.names}
    plans = plan_remove(params, {"primary": pcs, "secondary": scs}, pairs)
    return PlanOutput(plans, {p.server: p.server for p in plans}, warnings)


def candidate_names(out: PlanOutput) -> dict[tuple[str, str], str]:
    """(server, source path) -> file name in the output directory, for every changed file."""
    names: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    for plan in out.plans:
        label = out.labels[plan.server]
        for path in plan.after:
            if path == plan.main:
                name = f"{label}.conf"
            elif plan.after[path] != plan.before.get(path):
                name = Path(path).name
                if name in taken or name in {"primary.conf", "secondary.conf"}:
                    name = f"{label}.{name}"
            else:
                continue
            taken.add(name)
            names[(plan.server, path)] = name
    return names


def validate_with_dhcpd(plan: ServerPlan, dhcpd: str) -> None:
    """Run ``dhcpd -t -cf`` on the candidate, with included files staged beside it."""
    with tempfile.TemporaryDirectory(prefix="dhcp-failover-plan-") as tmp:
        staged: dict[str, str] = {}  # real path -> staged path
        for i, (path, text) in enumerate(plan.after.items()):
            if path != plan.main and text != plan.before.get(path):
                dest = Path(tmp) / f"include-{i}-{Path(path).name}"
                dest.write_bytes(encode(text))
                staged[path] = str(dest)
        main_text = plan.after[plan.main]
        if staged:
            main_text = rewrite_includes(main_text, _include_mapping(main_text, plan, staged))
        main = Path(tmp) / Path(plan.main).name
        main.write_bytes(encode(main_text))
        proc = subprocess.run(
            [dhcpd, "-t", "-cf", str(main)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=Path(plan.main).parent,  # relative includes resolve as load_local resolved them
        )
        if proc.returncode == 0:
            return
        output = proc.stdout + proc.stderr
        path_map = {str(main): plan.main, **{v: k for k, v in staged.items()}}
        diagnosis = parse_dhcpd_output(output, path_map)
        detail: dict[str, Any] = diagnosis.to_detail() if diagnosis else {}
        detail["output"] = output[-4000:]
        first = diagnosis.message if diagnosis else "dhcpd -t rejected the candidate"
        raise ValidationFailed(
            f"dhcpd -t rejected the candidate for {plan.server}: {first}",
            server=plan.server,
            phase=Phase.validate,
            detail=detail,
        )


def _include_mapping(text: str, plan: ServerPlan, staged: dict[str, str]) -> dict[str, str]:
    """Include path as written -> staged path, for the includes that changed."""
    mapping = {}
    for written in include_paths(text, plan.main):
        real = str(resolve_include(written, Path(plan.main)))
        if real in staged:
            mapping[written] = staged[real]
    return mapping


def run_plan(request_file: Path, primary: Path, secondary: Path, out_dir: Path | None) -> int:
    """The ``plan`` command; returns the exit status. Inputs are only ever read."""
    try:
        request = parse_request(request_file.read_bytes())
    except ValidationError as exc:
        return _reject(
            ErrorInfo(
                code="invalid_request",
                message=f"{request_file}: request does not match the schema",
                phase=Phase.validate,
                detail=json.loads(exc.json(include_url=False, include_input=False)),
            )
        )
    try:
        out = plan_request(request, primary, secondary)
        dhcpd = shutil.which("dhcpd") or (
            "/usr/sbin/dhcpd" if Path("/usr/sbin/dhcpd").exists() else None
        )
        if dhcpd:
            for plan in out.plans:
                if plan.changed:
                    validate_with_dhcpd(plan, dhcpd)
        else:
            out.warnings.append("dhcpd not found on PATH: candidates were not validated")
    except (WorkerError, ConfigError) as exc:
        return _reject(exc.to_info())
    for warning in out.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for plan in out.plans:
        sys.stdout.write(plan.diff())
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for (server, path), name in candidate_names(out).items():
            plan = next(p for p in out.plans if p.server == server)
            (out_dir / name).write_bytes(encode(plan.after[path]))
    return EXIT_OK


def _reject(info: ErrorInfo) -> int:
    print(info.model_dump_json(), file=sys.stderr)
    return EXIT_REJECTED


def inspect_config(path: Path) -> dict[str, Any]:
    """The failover peers of a config (and its includes) as plain JSON-able data."""
    warnings: list[str] = []
    cs = load_local(path, warnings)
    peers = []
    for peer in cs.peers().values():
        peers.append(
            {
                "name": peer.name,
                "role": peer.role,
                "roleDeclared": peer.role_declared,
                "parameters": dict(peer.params),
                "file": peer.file,
                "line": peer.line,
                "scopes": [
                    {"kind": s.kind, "label": s.label, "file": s.file, "line": s.line}
                    for s in peer.pools
                ],
            }
        )
    return {"file": str(path), "peers": peers, "warnings": warnings}
