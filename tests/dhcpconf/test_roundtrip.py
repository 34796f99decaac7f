"""Lossless parsing: render(parse(text)) == text, byte for byte, and the tree has the shape
dhcpd sees (statements ended by ';', blocks by '}')."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dhcpconf.corpus import (
    ALL_FILES,
    CASES,
    CONFIG_FILES,
    CONFIGS,
    DHCPV6,
    REJECTED,
    config_text,
    read_config,
)
from tests.dhcpconf.pairs import MAIN
from worker.dhcpconf import ConfigSet, parse, render
from worker.dhcpconf.tree import Block, Node, Statement
from worker.errors import ConfigError

Shape = tuple[object, ...]


def shape(items: list[Node]) -> Shape:
    """'s' for a statement, ('b', children) for a block."""
    return tuple("s" if isinstance(n, Statement) else ("b", shape(n.body)) for n in items)


def test_every_config_fixture_is_a_case_a_part_of_one_rejected_or_dhcpv6() -> None:
    used = [c.main for c in CASES] + [n for c in CASES for n in c.includes.values()]
    known = set(used) | set(REJECTED) | set(DHCPV6)
    assert set(CONFIG_FILES) == known
    assert len(CONFIG_FILES) >= 20


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_fixture_starts_with_a_header_saying_what_it_exercises(name: str) -> None:
    header = config_text(name).split("\n\n", 1)[0]
    assert header.startswith("#") and name in header and "Exercises:" in header


def test_the_crlf_fixture_still_has_crlf_bytes_so_git_kept_them() -> None:
    data = (CONFIGS / "lexing-secondary-crlf.conf").read_bytes()
    assert data.count(b"\n") > 40 and data.count(b"\r\n") == data.count(b"\n")
    assert "-text" in (CONFIGS / ".gitattributes").read_text()


@pytest.mark.parametrize("path", ALL_FILES)
def test_every_config_file_renders_back_byte_for_byte_and_parses_or_fails_clearly(
    path: Path,
) -> None:
    text = read_config(path)
    doc = parse(text, path.name)
    assert render(doc) == text
    assert doc.items, "the file parsed into nothing"
    try:
        cs = ConfigSet.parse({MAIN: text}, MAIN)
    except ConfigError as err:  # the failover model refuses a peer block it cannot read
        assert err.line is not None and err.column is not None and err.message
        return
    assert cs.texts() == {MAIN: text}


def test_a_config_file_parses_into_its_real_structure() -> None:
    doc = parse(config_text("router-primary.conf"))
    keywords = [doc.keyword(n) for n in doc.items if isinstance(n, Block)]
    assert keywords == ["on", "on", "class", "failover", "shared-network"]
    network = [n for n in doc.items if isinstance(n, Block)][-1]
    inner = [doc.label(n) for n in network.body if isinstance(n, Block)]
    assert inner == ["subnet 10.40.0.0 netmask 255.255.255.0", "on commit"]


TRICKY = {
    "crlf and tabs": "authoritative;\r\n\tsubnet 10.0.0.0 netmask 255.0.0.0 {\r\n\t}\r\n",
    "comment inside a statement": "option domain-name-servers # first\n  10.0.0.1, # second\n"
    "  10.0.0.2;\n",
    "string with ; { } and #": 'option domain-name "a;b{c}#d";\nfilename "x\\"y;";\n',
    "string spanning lines": 'option motd "line one\nline two; {";\n',
    "key block with a trailing semicolon": 'key k {\n  algorithm hmac-md5;\n  secret "s";\n};\n',
    "if elsif else": 'if option a = 1 {\n  filename "a";\n} elsif exists b {\n  filename "b";\n}'
    ' else {\n  filename "c";\n}\n',
    "on commit with nested if": 'on commit {\n  if not (x = "{") {\n    log("}");\n  }\n}\n',
    "record type in braces": "option x code 200 = { unsigned integer 8, text };\n",
    "hba spanning lines": 'failover peer "p" {\n  hba ff:ff:\n      00:00;\n}\n',
    "match if spanning lines": 'class "c" {\n  match if ((extract-int (suffix\n\t\t (option '
    "x, 1), 8) % 2) = 0);\n}\n",
    "no final newline": "authoritative;  # done",
    "only comments and blanks": "# nothing here\n\n   \n# really\n",
    "empty file": "",
    "include": 'include "/etc/dhcp/extra.conf";\n',
    "escaped quote swallowed by a zero escape": 'option a "x\\0"y";\n',
    "unicode and stray bytes": "# caf\u00e9 \udcff\nmax\u2010response\u2010delay 60;\n",
    "unterminated statement before a brace": "group { option a 1 }\n",
}


@pytest.mark.parametrize("text", TRICKY.values(), ids=TRICKY.keys())
def test_tricky_texts_render_back_byte_for_byte(text: str) -> None:
    assert render(parse(text)) == text


def test_semicolons_and_braces_inside_strings_and_comments_do_not_end_statements() -> None:
    doc = parse('a "x;y{" # ; { }\n  b;\nc { d "}"; }\n')
    assert shape(doc.items) == ("s", ("b", ("s",)))
    assert doc.label(doc.items[0]) == 'a "x;y{" b'


def test_a_trailing_semicolon_after_a_block_is_its_own_empty_statement() -> None:
    doc = parse("key k { secret x; };\n")
    assert shape(doc.items) == (("b", ("s",)), "s")


def test_a_zero_octal_escape_swallows_the_next_character_like_dhcpd() -> None:
    # conflex.c read_string: "\0" followed by a non-octal character drops that character and
    # reads the next one as escaped, so this quote does not end the string.
    doc = parse('option a "x\\0"y";\nb;\n')
    assert shape(doc.items) == ("s", "s")


@pytest.mark.parametrize(
    ("text", "line", "column", "what"),
    [
        ("a {\n  b;\n", 1, 1, "never closed"),
        ("a;\n}\n", 2, 1, "without a matching"),
        ('a "open;\n', 1, 3, "inside a string"),
        ("a;\nb\n", 2, 1, "not terminated"),
    ],
)
def test_broken_structure_is_a_config_error_with_line_and_column(
    text: str, line: int, column: int, what: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, "x.conf")
    assert (err.value.file, err.value.line, err.value.column) == ("x.conf", line, column)
    assert what in err.value.message


# -- generated configs ---------------------------------------------------------------------

_ws = st.sampled_from([" ", "\t", "  ", "\n", "\r\n", "\n\n", " \t\n\t", "\r\n\r\n  "])
_comment = st.builds(
    lambda body, eol: "#" + body + eol,
    st.text('ab ;{}#"\\\t\r\u00e9', max_size=12),
    st.sampled_from(["\n", "\r\n"]),
)
_sep = st.one_of(_ws, _ws, _comment)
_trivia = st.lists(_sep, max_size=3).map("".join)
_octet = st.integers(0, 255)
_word = st.one_of(
    st.builds(lambda a, b: a + b, st.sampled_from("aBfPsz"), st.text("abcxyzAZ019_-", max_size=8)),
    st.integers(-99, 99999).map(str),
    st.tuples(_octet, _octet, _octet, _octet).map(lambda t: ".".join(map(str, t))),
    st.lists(_octet, min_size=2, max_size=6).map(lambda t: ":".join(f"{b:02x}" for b in t)),
    st.sampled_from(["failover", "peer", "primary", "pool", "subnet", "include"]),
)
_string_piece = st.one_of(
    st.text("ab ;{}#\n\t\u00e9", min_size=1, max_size=6),
    st.sampled_from(['\\"', "\\\\", "\\n", "\\t", "\\x4a", "\\101", "\\b"]),
)
_string = st.lists(_string_piece, max_size=4).map(lambda ps: '"' + "".join(ps) + '"')
_punct = st.sampled_from([",", ":", "=", "(", ")", ".", "!", "&", "/", "\u2010", "\xa0"])
_token = st.one_of(_word, _word, _string, _punct)


@st.composite
def _tokens(draw: st.DrawFn) -> str:
    tokens: list[str] = draw(st.lists(_token, min_size=1, max_size=5))
    return "".join(tok + draw(_sep) for tok in tokens[:-1]) + tokens[-1]


def _statement() -> st.SearchStrategy[tuple[str, Shape]]:
    return st.builds(lambda toks, ws: (toks + ws + ";", ("s",)), _tokens(), _trivia)


def _block(children: st.SearchStrategy[tuple[str, Shape]]) -> st.SearchStrategy[tuple[str, Shape]]:
    def build(
        head: str, ws: str, body: tuple[str, Shape], tail: str, semi: bool
    ) -> tuple[str, Shape]:
        text = head + ws + "{" + body[0] + tail + "}" + (";" if semi else "")
        return text, (("b", body[1]),) + (("s",) if semi else ())

    return st.builds(build, _tokens(), _trivia, children, _trivia, st.booleans())


def _items(item: st.SearchStrategy[tuple[str, Shape]]) -> st.SearchStrategy[tuple[str, Shape]]:
    def join(parts: list[tuple[str, str, Shape]]) -> tuple[str, Shape]:
        text = "".join(lead + body for lead, body, _ in parts)
        return text, tuple(s for _, _, shp in parts for s in shp)

    return st.lists(
        st.tuples(_trivia, item).map(lambda p: (p[0], p[1][0], p[1][1])), max_size=4
    ).map(join)


_config = st.recursive(
    _items(_statement()),
    lambda inner: _items(st.one_of(_statement(), _block(inner))),
    max_leaves=15,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_config, _trivia)
def test_generated_configs_render_back_and_parse_into_the_generated_shape(
    config: tuple[str, Shape], tail: str
) -> None:
    text = config[0] + tail
    doc = parse(text)
    assert render(doc) == text
    assert shape(doc.items) == config[1]


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from('ab ;{}"#\\\n\r\t0x')))
def test_any_text_either_renders_back_or_is_a_config_error(text: str) -> None:
    try:
        doc = parse(text)
    except ConfigError as err:
        assert err.line is not None and err.column is not None
        return
    assert render(doc) == text
