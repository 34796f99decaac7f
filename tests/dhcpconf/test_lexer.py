"""The lexer mirrors dhcpd's (common/conflex.c): the same tokens, nothing lost."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.dhcpconf.lexer import is_number, quote, significant, string_value, tokenize


def kinds(text: str) -> list[tuple[str, str]]:
    return [(t.kind, t.text) for t in significant(tokenize(text))]


def test_names_and_numbers_are_runs_of_letters_digits_hyphens_and_underscores() -> None:
    assert kinds("max-response-delay 60;") == [
        ("word", "max-response-delay"),
        ("word", "60"),
        ("punct", ";"),
    ]


def test_dots_and_colons_are_punctuation_between_words_as_in_dhcpd() -> None:
    assert [t for _, t in kinds("10.0.0.1 ff:0a")] == [
        "10",
        ".",
        "0",
        ".",
        "0",
        ".",
        "1",
        "ff",
        ":",
        "0a",
    ]


def test_an_underscore_cannot_start_a_name() -> None:
    assert kinds("_x") == [("punct", "_"), ("word", "x")]


def test_a_comment_runs_to_the_end_of_the_line_whatever_it_holds() -> None:
    tokens = tokenize('a; # b "c; {\nd;')
    assert [t.text for t in tokens if t.kind == "comment"] == ['# b "c; {']
    assert [t for _, t in kinds('a; # b "c; {\nd;')] == ["a", ";", "d", ";"]


def test_a_hash_inside_a_string_is_not_a_comment() -> None:
    assert kinds('"a#b;{" c') == [("string", '"a#b;{"'), ("word", "c")]


def test_an_escaped_quote_does_not_end_a_string() -> None:
    assert kinds(r'"say \"hi\"";') == [("string", r'"say \"hi\""'), ("punct", ";")]


def test_non_ascii_characters_are_single_punctuation_tokens() -> None:
    assert kinds("max\u2010delay") == [("word", "max"), ("punct", "\u2010"), ("word", "delay")]


def test_a_string_the_file_ends_inside_is_marked_unterminated() -> None:
    (token,) = tokenize('"abc')
    assert token.kind == "string" and token.unterminated
    (closed,) = tokenize('"abc"')
    assert not closed.unterminated


@pytest.mark.parametrize(
    ("token", "value"),
    [
        ('"plain"', "plain"),
        (r'"a\"b"', 'a"b'),
        (r'"t\tn\n"', "t\tn\n"),
        (r'"\x41\101"', "AA"),
        (r'"back\\slash"', "back\\slash"),
    ],
)
def test_string_values_apply_dhcpd_escapes(token: str, value: str) -> None:
    assert string_value(token) == value


@given(st.text())
def test_quote_gives_a_string_token_whose_value_is_the_original(value: str) -> None:
    quoted = quote(value)
    (token,) = tokenize(quoted)
    assert token.kind == "string" and string_value(token.text) == value


def test_numbers_are_what_dhcpd_reads_as_number_tokens() -> None:
    assert is_number("647") and is_number("-5")
    assert not is_number("0x10") and not is_number("6.5") and not is_number("-")


@settings(max_examples=300)
@given(st.text())
def test_tokens_concatenate_back_to_any_text(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(t.text for t in tokens) == text
    assert all(t.start == sum(len(u.text) for u in tokens[:i]) for i, t in enumerate(tokens))
