"""Which validation copies a candidate tree needs, so dhcpd checks every changed file."""

from __future__ import annotations

import posixpath

from worker.change.staging import validation_setup

MAIN = "/etc/dhcp/dhcpd.conf"
A = "/etc/dhcp/a.conf"
B = "/etc/dhcp/sub/b.conf"
TREE = {
    MAIN: 'authoritative;\ninclude "a.conf";\n',
    A: 'include "/etc/dhcp/sub/b.conf";\n',
    B: "subnet 10.0.0.0 netmask 255.0.0.0 { }\n",
}


def test_a_changed_main_file_alone_is_validated_as_staged() -> None:
    setup = validation_setup(MAIN, TREE, [MAIN], "r1", posixpath.dirname(MAIN))

    assert setup.target == "/etc/dhcp/.dhcpd.conf.r1.new"
    assert setup.copies == {}
    assert setup.path_map == {"/etc/dhcp/.dhcpd.conf.r1.new": MAIN}


def test_a_changed_nested_include_gets_copies_along_its_include_path() -> None:
    setup = validation_setup(MAIN, TREE, [B], "r1", posixpath.dirname(MAIN))

    assert setup.target == "/etc/dhcp/.dhcpd.conf.r1.check"
    main_copy, main_text = setup.copies[MAIN]
    a_copy, a_text = setup.copies[A]
    assert main_copy == setup.target
    assert 'include "/etc/dhcp/.a.conf.r1.check";' in main_text
    assert a_copy == "/etc/dhcp/.a.conf.r1.check"
    assert 'include "/etc/dhcp/sub/.b.conf.r1.new";' in a_text
    assert B not in setup.copies  # the staged candidate itself is what a.conf's copy includes
    assert setup.path_map == {
        "/etc/dhcp/sub/.b.conf.r1.new": B,
        "/etc/dhcp/.a.conf.r1.check": A,
        "/etc/dhcp/.dhcpd.conf.r1.check": MAIN,
    }


def test_an_unchanged_include_stays_the_live_file() -> None:
    setup = validation_setup(MAIN, TREE, [MAIN, A], "r1", posixpath.dirname(MAIN))

    _, main_text = setup.copies[MAIN]
    assert 'include "/etc/dhcp/.a.conf.r1.new";' in main_text
    assert A not in setup.copies  # its include (b.conf) did not change
