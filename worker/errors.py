"""The exception taxonomy every layer raises and the consumer understands.

Three families decide what happens to a request (docs/design.md, "Failure semantics"):

* :class:`Rejected` -- the request itself is wrong; retrying cannot help; outcome ``rejected``.
* :class:`Failed` -- the change could not be prepared (unreachable server, lock timeout,
  candidate refused by ``dhcpd -t``); nothing live changed; outcome ``failed``.
* :class:`Ambiguous` -- a remote step may or may not have happened (a command past its
  timeout, a connection lost mid-command); the coordinator must treat it as a failure of the
  step and restore, never as a success.
"""

from __future__ import annotations

from typing import Any

from worker.messages import ErrorInfo, Phase


class WorkerError(Exception):
    """Base class: carries the fields of the result event's ``error`` object."""

    code = "error"
    default_phase: Phase = Phase.plan

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        server: str | None = None,
        phase: Phase | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.server = server
        self.phase = phase if phase is not None else self.default_phase
        self.detail = detail

    def to_info(self) -> ErrorInfo:
        return ErrorInfo(
            code=self.code,
            message=self.message,
            server=self.server,
            phase=self.phase,
            detail=self.detail,
        )


# -- rejected: the request is invalid ---------------------------------------------------------


class Rejected(WorkerError):
    """The request is invalid; never retried."""

    code = "invalid_request"
    default_phase = Phase.validate


class UnknownServer(Rejected):
    code = "unknown_server"


class PeerNotFound(Rejected):
    code = "peer_not_found"
    default_phase = Phase.plan


class RoleMismatch(Rejected):
    code = "role_mismatch"
    default_phase = Phase.plan


class PairMismatch(Rejected):
    """The two halves of a relationship disagree (addresses, ports, split/hba placement)."""

    code = "pair_mismatch"
    default_phase = Phase.plan


class ConfigError(Rejected):
    """A config text the engine cannot parse or edit safely; carries where."""

    code = "config_error"
    default_phase = Phase.plan

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        where = {"file": file, "line": line, "column": column}
        detail = kwargs.pop("detail", None)
        if detail is None:
            detail = {k: v for k, v in where.items() if v is not None} or None
        loc = ":".join(str(v) for v in (file, line, column) if v is not None)
        super().__init__(f"{loc}: {message}" if loc else message, detail=detail, **kwargs)


# -- failed: could not be prepared, nothing live changed --------------------------------------


class Failed(WorkerError):
    """A transient or environmental failure; the live configs are untouched."""

    code = "failed"
    default_phase = Phase.prepare


class Unreachable(Failed):
    code = "unreachable"


class HostKeyMismatch(Failed):
    code = "host_key_rejected"


class LockTimeout(Failed):
    code = "lock_timeout"


class LockLost(Failed):
    """A change lock vanished with its SSH connection: the step was refused, not run.

    The coordinator never announces an outcome decided without its locks: it takes them
    again and finishes the change from the journals (docs/design.md §4).
    """

    code = "lock_lost"


class ValidationFailed(Failed):
    """``dhcpd -t`` refused a candidate; ``detail`` holds dhcpd's own output and line."""

    code = "validation_failed"


class ConcurrentChange(Failed):
    """The live file changed between plan and commit; we refuse to overwrite it."""

    code = "concurrent_change"


class CommandFailed(Failed):
    code = "command_failed"


class OmapiUnreachable(Failed):
    """Nothing answers OMAPI on the server (dhcpd down, wrong ``omapi.port``, forward refused)."""

    code = "omapi_unreachable"


class OmapiAuthFailed(Failed):
    """dhcpd refused the OMAPI key, or wants one and the inventory gives none."""

    code = "omapi_auth_failed"


class VerifyFailed(Failed):
    """The running pair did not re-form with the requested values after a commit.

    ``code`` is ``pair_not_normal`` or ``running_values_differ``; ``detail`` holds the states
    and values read on each server. Raised after the commit, so the outcome is a rollback.
    """

    code = "pair_not_normal"
    default_phase = Phase.verify


# -- ambiguous: may or may not have happened --------------------------------------------------


class Ambiguous(WorkerError):
    """A remote step whose effect is unknown (timeout, connection lost mid-command)."""

    code = "ambiguous"
    default_phase = Phase.commit


# -- appended by the transport: definite (non-ambiguous) refusals of a remote file operation ---


class RemoteFileError(Failed):
    """The server refused a file operation (permission denied, not a directory, ...).

    Unlike :class:`Ambiguous`, the operation definitely did not happen.
    """

    code = "remote_file_error"


class RemoteFileNotFound(RemoteFileError, FileNotFoundError):
    """A remote file or directory an operation needs does not exist (also a FileNotFoundError,
    so code written against the in-memory fake catches it the same way)."""

    code = "remote_file_not_found"


class RemoteFileTooLarge(RemoteFileError):
    """A remote file is larger than the worker reads (``MAX_READ_BYTES``), or never ends (a
    device such as ``/dev/zero`` named by an ``include``): nothing was read."""

    code = "file_too_large"
