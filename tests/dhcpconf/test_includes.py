"""include statements: listing them as written, and pointing them at staged copies."""

from __future__ import annotations

import pytest

from worker.dhcpconf import include_paths, rewrite_includes
from worker.errors import ConfigError

TEXT = """\
include "/etc/dhcp/a.conf";
# include "/etc/dhcp/commented.conf";
shared-network n {
  include "pools.conf"; # relative, as written
}
option motd "include \\"not-a-file\\";";
INCLUDE "/etc/dhcp/with \\"quote\\".conf";
"""


def test_include_paths_lists_every_include_in_order_as_written() -> None:
    assert include_paths(TEXT) == ["/etc/dhcp/a.conf", "pools.conf", '/etc/dhcp/with "quote".conf']


def test_an_include_is_known_by_its_first_word_whatever_its_spacing_or_case() -> None:
    text = 'include"glued.conf";\nInclude\t"tab.conf" ;\nincludes "no.conf";\ninclude-x "n.conf";\n'
    assert include_paths(text) == ["glued.conf", "tab.conf"]


def test_rewrite_includes_changes_only_the_mapped_paths() -> None:
    after = rewrite_includes(
        TEXT, {"pools.conf": "/tmp/stage/pools.conf", '/etc/dhcp/with "quote".conf': "/tmp/q.conf"}
    )
    assert after == TEXT.replace('"pools.conf"', '"/tmp/stage/pools.conf"').replace(
        '"/etc/dhcp/with \\"quote\\".conf"', '"/tmp/q.conf"'
    )
    assert include_paths(after) == ["/etc/dhcp/a.conf", "/tmp/stage/pools.conf", "/tmp/q.conf"]


def test_rewrite_includes_quotes_the_new_path() -> None:
    after = rewrite_includes('include "a";\n', {"a": 'we"ird\\path'})
    assert after == 'include "we\\"ird\\\\path";\n'
    assert include_paths(after) == ['we"ird\\path']


def test_include_paths_of_broken_text_is_a_config_error_naming_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        include_paths('include "a.conf";\nsubnet x {\n', "/etc/dhcp/dhcpd.conf")
    assert (err.value.file, err.value.line, err.value.column) == ("/etc/dhcp/dhcpd.conf", 2, 1)
