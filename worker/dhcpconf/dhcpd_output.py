"""Reading what ``dhcpd -t -cf FILE`` says about a candidate.

dhcpd reports a parse error as three lines (``common/parse.c``, ``parse_warn``)::

    /tmp/stage/dhcpd.conf line 3: semicolon expected.
      address
       ^

the file and line, the source line as far as the lexer had read it, and a caret under the
token (left out past column 80). After one error the parser resynchronises badly, so a single
missing ``;`` can be followed by thousands of "not found" records; the first one is the one
to show, the rest are counted. Errors found after parsing (``Can't open ...``, ``ERROR:
Failover peer ... has no referring pools``) have no location. The output ends with
"Configuration file errors encountered -- exiting" or a fatal message, then ISC's paragraph
about submitting bugs, which is noise here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

_RECORD_RE = re.compile(r"^(?P<file>.+?) line (?P<line>\d+): (?P<message>.*)$")
_CARET_RE = re.compile(r"^ *\^$")
_END_OF_ERRORS = "Configuration file errors encountered -- exiting"
_BOILERPLATE = "If you think you have received this message due to a bug"
_BANNER = (
    "Internet Systems Consortium DHCP Server",
    "Copyright ",
    "All rights reserved.",
    "For info, please visit",
    "Config file:",
    "Database file:",
    "PID file:",
    "WARNING:",
    "exiting.",
)


@dataclass(frozen=True)
class DhcpdDiagnosis:
    """The first error dhcpd reported, and how many more followed it.

    ``file``/``line`` are None for an error dhcpd gives no location for; ``column`` is None
    when dhcpd printed no caret.
    """

    file: str | None
    line: int | None
    message: str
    source_line: str | None
    column: int | None
    cascade: int

    def to_detail(self) -> dict[str, object]:
        """For the result event's ``error.detail``."""
        return asdict(self)


def parse_dhcpd_output(
    output: str, path_map: Mapping[str, str] | None = None
) -> DhcpdDiagnosis | None:
    """The first error in dhcpd's output, its file mapped through ``path_map`` (temporary
    path -> real name, also applied inside messages); None when it reports no error."""
    mapping = dict(path_map or {})
    lines = output.splitlines()
    records: list[DhcpdDiagnosis] = []
    i = 0
    while i < len(lines):
        text = lines[i]
        if text.startswith(_END_OF_ERRORS) or text.startswith(_BOILERPLATE):
            break
        m = _RECORD_RE.match(text)
        if m is None:
            i += 1
            continue
        source = lines[i + 1] if i + 1 < len(lines) else None
        column = None
        if i + 2 < len(lines) and _CARET_RE.match(lines[i + 2]):
            column = lines[i + 2].index("^") + 1
            i += 3
        else:
            i += 2
        records.append(
            DhcpdDiagnosis(
                file=mapping.get(m.group("file"), m.group("file")),
                line=int(m.group("line")),
                message=_mapped(m.group("message"), mapping),
                source_line=source,
                column=column,
                cascade=0,
            )
        )
    if records:
        first = records[0]
        return DhcpdDiagnosis(
            first.file,
            first.line,
            first.message,
            first.source_line,
            first.column,
            cascade=len(records) - 1,
        )
    return _unlocated(lines, mapping)


def _unlocated(lines: list[str], mapping: Mapping[str, str]) -> DhcpdDiagnosis | None:
    """A fatal error without a file and line: the first message before ISC's paragraph."""
    if not any(line.startswith(_BOILERPLATE) for line in lines):
        return None
    messages: list[str] = []
    for line in lines:
        if line.startswith(_BOILERPLATE):
            break
        if line.strip() and not line.startswith(_BANNER):
            messages.append(line)
    if not messages:
        return None
    errors = [m for m in messages if m.startswith("ERROR:")] or messages
    first = errors[0]
    return DhcpdDiagnosis(
        file=None,
        line=None,
        message=_mapped(first, mapping),
        source_line=None,
        column=None,
        cascade=len(errors) - 1,
    )


def _mapped(message: str, mapping: Mapping[str, str]) -> str:
    for temp, real in mapping.items():
        message = message.replace(temp, real)
    return message
