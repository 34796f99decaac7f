"""Key material never shows in a redacted diff, whatever its spelling; lines stay lines."""

from __future__ import annotations

import re

import pytest

from tests.dhcpconf.corpus import CONFIG_FILES, config_text
from tests.dhcpconf.pairs import MAIN, PRIMARY, one
from worker.dhcpconf import PeerSettings, modify_edit, remove_edit, unified_diff
from worker.dhcpconf.redact import secrets
from worker.messages import DeconfigureAction

KEY = 'key "ddns" {\n  algorithm hmac-sha256;\n  secret "c2VjcmV0LXZhbHVl";\n}\n'
#: A key block right after the peer block: three lines of context below the last peer
#: statement reach its secret.
NEXT_KEY = 'key "ddns" {\n  secret "c2VjcmV0LXZhbHVl";\n  algorithm hmac-sha256;\n}\n'
WITH_KEY = PRIMARY.replace("}\nsubnet", "}\n" + NEXT_KEY + "subnet", 1)


def redacted(text: str) -> list[str]:
    """Each line of ``text`` as a redacted diff shows it."""
    found = secrets(text, MAIN)
    out, at = [], 0
    for line in text.splitlines(keepends=True):
        out.append(found.redact_line(at, line))
        at += len(line)
    return out


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ('  secret "c2VjcmV0";\n', '  secret "<redacted>";\n'),
        ("  secret c2Vj+cmV0/bz0=;\n", '  secret "<redacted>";\n'),  # base64 cut into tokens
        ("  SECRET c2VjcmV0 ; # note\n", '  SECRET "<redacted>" ; # note\n'),
        ('  secret "a;b\\"c";\n', '  secret "<redacted>";\n'),
    ],
)
def test_a_secret_value_is_redacted_however_it_is_written(statement: str, shown: str) -> None:
    text = KEY.replace('  secret "c2VjcmV0LXZhbHVl";\n', statement)
    assert redacted(text)[2] == shown


def test_a_secret_over_several_lines_keeps_its_lines() -> None:
    text = KEY.replace('  secret "c2VjcmV0LXZhbHVl";\n', "  secret\n    c2VjcmV0+\n    LXZh=;\n")
    assert redacted(text)[2:5] == ["  secret\n", '    "<redacted>"\n', ";\n"]


def test_a_key_block_in_a_subnet_and_an_ldap_password_are_redacted_and_nothing_else() -> None:
    unrelated = '# the secret is elsewhere\noption domain-name "secret.example";\n'
    text = (
        unrelated + 'ldap-password "hunter2";\noption server.ldap-password "hunter3";\n'
        "subnet 10.0.0.0 netmask 255.0.0.0 {\n  " + KEY.replace("\n", "\n  ") + "\n}\n"
    )
    shown = "".join(redacted(text))
    assert "hunter" not in shown and "c2VjcmV0LXZhbHVl" not in shown
    assert shown.count('"<redacted>"') == 3 and shown.startswith(unrelated)


def test_a_text_that_does_not_parse_still_has_its_secrets_hidden() -> None:
    text = 'key "x" {\n  secret "c2VjcmV0";\n'  # the brace never closes
    assert redacted(text)[1] == '  secret "<redacted>";\n'


def test_a_modify_next_to_a_key_block_shows_the_secret_only_redacted() -> None:
    edit = modify_edit(one(WITH_KEY), "fo", PeerSettings(load_balance_max_seconds=5))
    raw = unified_diff(MAIN, WITH_KEY, edit.texts[MAIN], edit.patches[MAIN])
    shown = unified_diff(MAIN, WITH_KEY, edit.texts[MAIN], edit.patches[MAIN], redact=True)
    assert '   secret "c2VjcmV0LXZhbHVl";\n' in raw.text  # the offline plan's full diff
    assert '   secret "<redacted>";\n' in shown.text and "c2VjcmV0" not in shown.text
    assert shown.text.count("\n") == raw.text.count("\n")


def test_a_removed_key_block_is_redacted_on_the_removed_lines() -> None:
    text = PRIMARY.replace(
        "    range 10.0.0.10 10.0.0.99;\n", "    range 10.0.0.10 10.0.0.99;\n" + KEY
    )
    secondary = text.replace("  primary;\n", "  secondary;\n")
    secondary = secondary.replace("  mclt 1800;\n  split 128;\n", "")
    edit = remove_edit(one(secondary), ["fo"], DeconfigureAction.delete)
    shown = unified_diff(MAIN, secondary, edit.texts[MAIN], edit.patches[MAIN], redact=True)
    assert '-  secret "<redacted>";\n' in shown.text and "c2VjcmV0" not in shown.text


SECRET_VALUE = re.compile(r'secret\s+"?([A-Za-z0-9+/=]{8,})', re.IGNORECASE)
#: The fixture files that hold key material, each spelled as a real config spells it.
WITH_SECRETS = [n for n in CONFIG_FILES if SECRET_VALUE.search(config_text(n))]


@pytest.mark.parametrize("name", WITH_SECRETS)
def test_every_secret_of_the_fixtures_is_redacted_and_every_line_kept(name: str) -> None:
    text = config_text(name)
    found = secrets(text, name)
    shown, at = [], 0
    for line in text.splitlines(keepends=True):
        shown.append(found.redact_line(at, line))
        at += len(line)
    assert len(shown) == len(text.splitlines())
    assert not [m.group(1) for m in SECRET_VALUE.finditer(text) if m.group(1) in "".join(shown)]
    assert "".join(shown).count('"<redacted>"') == len(SECRET_VALUE.findall(text))
