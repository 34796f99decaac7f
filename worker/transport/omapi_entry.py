"""The inventory's per-server ``omapi`` table: how the verify phase reads the running dhcpd.

Its own module so that :mod:`worker.transport.inventory` stays one read; the table is a field
of :class:`~worker.transport.inventory.ServerEntry` and validated with it (same errors).
"""

from __future__ import annotations

import binascii
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from worker.change.running import PeerState, VerifyPolicy

DEFAULT_OMAPI_PORT = 7911
_STATE_LABELS = {s.label: s for s in PeerState if s is not PeerState.unknown}


def resolve_local(path: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the inventory file, not to the working directory."""
    base = (info.context or {}).get("base_dir")
    path = path.expanduser()
    return Path(base) / path if not path.is_absolute() and base is not None else path


class OmapiEntry(BaseModel):
    """How the worker reads the running dhcpd over OMAPI (the verify phase, issue 10).

    Reached through the server's SSH connection to ``127.0.0.1:port`` on the server. Either a
    key (``key_name`` + ``key_secret_file``, dhcpd's ``omapi-key``) or ``none = true``: an
    unauthenticated OMAPI must be chosen, never the result of a forgotten key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(default=DEFAULT_OMAPI_PORT, ge=1, le=65535)
    none: bool = Field(default=False, description="OMAPI without a key (no omapi-key).")
    key_name: str | None = Field(
        default=None, validate_default=True, description="The `key` dhcpd's omapi-key names."
    )
    key_secret_file: Path | None = Field(
        default=None,
        validate_default=True,
        description="Local file holding that key's base64 HMAC-MD5 secret.",
    )
    allowed_states: tuple[str, ...] = Field(
        default=(PeerState.normal.label,),
        min_length=1,
        description="States a verified pair may be in (dhcpd's names, e.g. partner-down).",
    )
    verify_timeout: float = Field(default=60.0, gt=0, description="Seconds a verify may take.")

    @field_validator("key_name", mode="after")
    @classmethod
    def _key_or_none(cls, value: str | None, info: ValidationInfo) -> str | None:
        none = info.data.get("none", False)
        if none and value is not None:
            raise ValueError("not allowed with none = true (a keyed OMAPI or none, not both)")
        if not none and value is None:
            raise ValueError(
                "required: key_name and key_secret_file of dhcpd's omapi-key, or none = true "
                "for an OMAPI without a key"
            )
        if value is not None and (not value.strip() or any(c in value for c in '\0\n"')):
            raise ValueError(f"must be a key name as in dhcpd.conf, not {value!r}")
        return value

    @field_validator("key_secret_file", mode="after")
    @classmethod
    def _secret_with_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("none", False):
            if value is not None:
                raise ValueError("not allowed with none = true")
            return None
        if value is None:
            if info.data.get("key_name") is None:
                return None  # key_name's error already says what is missing
            raise ValueError("required with key_name: the file holding the key's secret")
        return resolve_local(value, info)

    @field_validator("allowed_states", mode="after")
    @classmethod
    def _known_states(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in _STATE_LABELS]
        if unknown:
            raise ValueError(
                f"unknown failover state(s) {', '.join(map(repr, unknown))}; dhcpd's are "
                + ", ".join(_STATE_LABELS)
            )
        return value

    @property
    def policy(self) -> VerifyPolicy:
        """The verify phase's view of this table."""
        return VerifyPolicy(
            allowed_states=frozenset(_STATE_LABELS[s] for s in self.allowed_states),
            timeout=self.verify_timeout,
        )

    def key_secret(self) -> bytes | None:
        """The key's secret (base64 text, as in dhcpd.conf), read now, so a rotated key needs
        no restart; None with ``none``. ``OSError`` when the file cannot be read,
        ``ValueError`` when it does not hold base64."""
        if self.key_secret_file is None:
            return None
        text = self.key_secret_file.read_bytes().strip()
        if not text:
            raise ValueError(f"{self.key_secret_file} is empty")
        try:
            binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error as e:
            raise ValueError(f"{self.key_secret_file} does not hold a base64 secret: {e}") from e
        return text


def secret_problem(omapi: OmapiEntry | None) -> str | None:
    """Why the table's key secret file cannot be used, if it cannot (``check_files``)."""
    if omapi is None or omapi.key_secret_file is None:
        return None
    if not omapi.key_secret_file.is_file():
        return f"file not found: {omapi.key_secret_file}"
    try:
        omapi.key_secret()
    except (OSError, ValueError) as e:
        return str(e)
    return None
