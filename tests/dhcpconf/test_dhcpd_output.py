"""Reading dhcpd's own report: the first error, where it is, and how many followed it."""

from __future__ import annotations

import pytest

from tests.dhcpconf.conftest import Dhcpd
from tests.dhcpconf.pairs import MAIN, PRIMARY
from worker.dhcpconf import DhcpdDiagnosis, parse_dhcpd_output

BANNER = (
    "Internet Systems Consortium DHCP Server 4.4.3-P1\n"
    "Copyright 2004-2022 Internet Systems Consortium.\n"
    "All rights reserved.\n"
    "For info, please visit https://www.isc.org/software/dhcp/\n"
)
BUG_PARAGRAPH = (
    "\nIf you think you have received this message due to a bug rather\n"
    "than a configuration issue please read the section on submitting\n"
    "bugs on either our web page at www.isc.org or in the README file\n"
    "before submitting a bug.  These pages explain the proper\n"
    "process and the information we find helpful for debugging.\n\nexiting.\n"
)


def test_a_clean_run_has_no_diagnosis() -> None:
    output = BANNER + "Config file: /tmp/x.conf\nDatabase file: /var/lib/dhcp/dhcpd.leases\n"
    assert parse_dhcpd_output(output) is None


def test_the_first_record_is_returned_with_its_source_line_and_caret_column() -> None:
    output = (
        BANNER
        + "/tmp/stage/c.conf line 3: semicolon expected.\n  address \n   ^\n"
        + "/tmp/stage/c.conf line 5: failover peer x: not found\n"
        + 'subnet 10.0.0.0 { pool { failover peer "x"\n                          ^\n'
        + "Configuration file errors encountered -- exiting\n"
        + BUG_PARAGRAPH
    )
    diagnosis = parse_dhcpd_output(output, {"/tmp/stage/c.conf": "/etc/dhcp/dhcpd.conf"})
    assert diagnosis == DhcpdDiagnosis(
        file="/etc/dhcp/dhcpd.conf",
        line=3,
        message="semicolon expected.",
        source_line="  address ",
        column=4,
        cascade=1,
    )
    assert diagnosis.to_detail()["cascade"] == 1


def test_a_record_without_a_caret_has_no_column() -> None:
    output = "f.conf line 9: too long\n" + "x" * 90 + "\nf.conf line 10: next\ny\n ^\n"
    diagnosis = parse_dhcpd_output(output)
    assert diagnosis is not None
    assert (diagnosis.line, diagnosis.column, diagnosis.cascade) == (9, None, 1)


@pytest.mark.integration
def test_one_missing_semicolon_cascades_and_only_the_first_error_is_shown(dhcpd: Dhcpd) -> None:
    pools = "".join(
        f'subnet 10.{i}.0.0 netmask 255.255.0.0 {{\n  pool {{\n    failover peer "fo";\n'
        f"    range 10.{i}.0.10 10.{i}.0.99;\n  }}\n}}\n"
        for i in range(1, 41)
    )
    text = PRIMARY.replace("  mclt 1800;", "  mclt 1800") + pools
    files = {MAIN: text}
    rc, output = dhcpd.check(files, MAIN)
    assert rc != 0
    diagnosis = parse_dhcpd_output(output, dhcpd.staged_names(files))
    assert diagnosis is not None
    assert (diagnosis.file, diagnosis.line) == (MAIN, 10)
    assert diagnosis.message == "semicolon expected."
    assert diagnosis.source_line is not None and diagnosis.column is not None
    assert diagnosis.cascade >= 40  # every pool's reference to the half-parsed peer


@pytest.mark.integration
def test_an_error_in_an_included_file_is_reported_under_that_files_real_name(
    dhcpd: Dhcpd,
) -> None:
    files = {MAIN: 'include "/etc/dhcp/extra.conf";\n', "/etc/dhcp/extra.conf": "a b c;\n"}
    rc, output = dhcpd.check(files, MAIN)
    assert rc != 0
    diagnosis = parse_dhcpd_output(output, dhcpd.staged_names(files))
    assert diagnosis is not None
    assert (diagnosis.file, diagnosis.line) == ("/etc/dhcp/extra.conf", 1)


@pytest.mark.integration
def test_an_error_without_a_location_is_the_message_before_iscs_paragraph(
    dhcpd: Dhcpd,
) -> None:
    files = {MAIN: PRIMARY.split("subnet")[0]}  # a peer that no pool refers to
    rc, output = dhcpd.check(files, MAIN)
    assert rc != 0
    diagnosis = parse_dhcpd_output(output, dhcpd.staged_names(files))
    assert diagnosis is not None and diagnosis.file is None and diagnosis.line is None
    assert diagnosis.message.startswith("ERROR: Failover peer, fo, has no referring pools")


@pytest.mark.integration
def test_a_missing_include_names_the_real_path(dhcpd: Dhcpd) -> None:
    files = {MAIN: 'include "/nonexistent/extra.conf";\n'}
    rc, output = dhcpd.check(files, MAIN)
    assert rc != 0
    diagnosis = parse_dhcpd_output(output, dhcpd.staged_names(files))
    assert diagnosis is not None
    assert diagnosis.message == "Can't open /nonexistent/extra.conf: No such file or directory"
