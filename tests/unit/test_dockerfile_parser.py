"""The Dockerfile parser: buildkit's line assembly, directives, flags, exec/shell form, heredocs."""

from __future__ import annotations

import ast
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_minidock.dockerfile._go import (
    go_lower,
    go_quote,
    go_quote_slice,
    go_trim_space,
    parse_go_bool,
    parse_go_duration,
    parse_go_uint,
)
from pytest_minidock.dockerfile.parser import (
    Heredoc,
    Node,
    chomp_heredoc,
    dump,
    dump_node,
    parse,
    parse_heredoc,
)
from pytest_minidock.errors import DockerfileError, DockerfileSyntaxError


def dumped(text: str) -> list[str]:
    return dump(parse(text).nodes).splitlines()


def args(text: str) -> list[tuple[str, ...]]:
    return [n.args for n in parse(text).nodes]


# -- Go helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("", '""'),
        ("abc", '"abc"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
        ("\x00\x01\x1f\x7f", '"\\x00\\x01\\x1f\\x7f"'),
        ("♥☃ à", '"♥☃ à"'),
        ("\u00a0", '"\\u00a0"'),
        ("\u200b", '"\\u200b"'),
        ("\U0010ffff", '"\\U0010ffff"'),
        ("🐳", '"🐳"'),
        ("\udcff\udc80", '"\\xff\\x80"'),  # bytes that were not UTF-8 (surrogateescape)
    ],
)
def test_go_quote_matches_strconv_quote(value: str, quoted: str) -> None:
    assert go_quote(value) == quoted


def test_go_quote_slice() -> None:
    assert go_quote_slice(["--a=b", "--c"]) == '["--a=b" "--c"]'
    assert go_quote_slice([]) == "[]"


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_go_quote_reads_back_as_a_python_literal(value: str) -> None:
    assert ast.literal_eval(go_quote(value)) == value


def test_go_string_helpers() -> None:
    assert go_trim_space("\u00a0\t x \u3000\n") == "x"
    assert go_lower("RUN") == "run"
    # simple case mapping: no final sigma, one character each
    assert go_lower("\u0130\u03a3") == "i\u03c3"
    assert parse_go_bool("T") is True
    assert parse_go_bool("False") is False
    assert parse_go_bool("yes") is None
    assert parse_go_uint("0755", 8, 32) == 0o755
    assert parse_go_uint("8", 8, 32) is None
    assert parse_go_uint("4294967296", 10, 32) is None
    assert parse_go_uint("-1", 10, 32) is None


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("30s", 30_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("500ms", 500_000_000),
        ("10us", 10_000),
        ("10µs", 10_000),
        ("3ns", 3),
        (".5s", 500_000_000),
        ("1.s", 1_000_000_000),
        ("-2s", -2_000_000_000),
        ("+2s", 2_000_000_000),
        ("", None),
        ("5", None),
        ("5x", None),
        ("s", None),
        (".s", None),
        ("1d", None),
    ],
)
def test_go_durations(text: str, ns: int | None) -> None:
    assert parse_go_duration(text) == ns


# -- line assembly -----------------------------------------------------------------------------


def test_keywords_are_case_insensitive_but_kept_as_written() -> None:
    result = parse("from alpine\nRun echo hi\nrUn echo ho\n")
    assert [n.keyword for n in result.nodes] == ["from", "Run", "rUn"]
    assert [n.command for n in result.nodes] == ["from", "run", "run"]
    assert dump(result.nodes) == '(from "alpine")\n(run "echo hi")\n(run "echo ho")\n'


def test_dump_of_one_node_and_of_an_onbuild_child() -> None:
    (node,) = parse('ONBUILD --x RUN ["a", "b"]\n').nodes
    assert dump_node(node) == 'onbuild ["--x"] (run "a" "b")'
    assert dump(()) == "\n"


def test_comments_blank_lines_and_line_numbers() -> None:
    text = "# top\n\nFROM a\n  # indented comment\nRUN echo \\\n  # inside\n\n  x # not a comment\n"
    result = parse(text)
    assert dump(result.nodes) == '(from "a")\n(run "echo   x # not a comment")\n'
    assert [(n.start_line, n.end_line) for n in result.nodes] == [(3, 3), (5, 8)]
    assert result.nodes[1].original == "RUN echo   x # not a comment"
    assert len(result.warnings) == 1  # the blank line inside the RUN


def test_empty_continuation_lines_warn_like_buildkit() -> None:
    text = (
        "FROM alpine:3.6\n\nRUN something \\\n\n    following \\\n\n    more\n\n"
        "RUN another \\\n\n    thing\nRUN non-indented \\\n# this is a comment\n"
        "   after-comment\n\nRUN indented \\\n    # this is an indented comment\n    comment\n"
    )
    result = parse(text)
    assert [w.line for w in result.warnings] == [7, 11]
    assert "empty continuation line found in: RUN something     following     more" in (
        result.warnings[0].message
    )
    assert "RUN another     thing" in result.warnings[1].message
    assert dumped(text)[3:] == [
        '(run "non-indented    after-comment")',
        '(run "indented     comment")',
    ]


def test_continuation_at_end_of_file_ends_the_instruction() -> None:
    assert dumped("FROM a\nRUN something \\") == ['(from "a")', '(run "something")']


def test_escaped_escape_at_end_of_line_is_not_a_continuation() -> None:
    assert dumped("FROM a\nRUN a\\\\\nRUN b\n") == [
        '(from "a")',
        '(run "a\\\\\\\\")',
        '(run "b")',
    ]


def test_continuation_allows_trailing_blanks_and_a_lone_escape_line() -> None:
    assert dumped("FROM a\nRUN a \\  \t\n  b\n") == ['(from "a")', '(run "a   b")']
    assert dumped("\\\nFROM a\n") == ['(from "a")']
    assert parse("\\\nFROM a\n").nodes[0].start_line == 1


def test_crlf_and_bom_are_handled() -> None:
    result = parse(b"\xef\xbb\xbf# escape=`\r\nFROM a\r\nRUN a `\r\n b\r\n")
    assert result.escape == "`"
    assert dump(result.nodes) == '(from "a")\n(run "a  b")\n'


def test_undecodable_bytes_survive_as_go_escapes() -> None:
    assert dump(parse(b"FROM a\nRUN echo \xff\n").nodes) == '(from "a")\n(run "echo \\xff")\n'


def test_line_longer_than_buildkit_reads_is_refused() -> None:
    with pytest.raises(DockerfileSyntaxError, match=r"^Dockerfile:2: line is longer than 65535"):
        parse("FROM a\nRUN " + "x" * 65536 + "\n")
    assert parse("FROM a\nRUN " + "x" * 65531 + "\n").nodes[1].args[0] == "x" * 65531


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n", "# syntax=x\n\n# hi\n"])
def test_file_with_no_instructions(text: str) -> None:
    with pytest.raises(DockerfileSyntaxError, match="file with no instructions") as info:
        parse(text, "ctx/Dockerfile")
    assert str(info.value).startswith("ctx/Dockerfile:")
    assert info.value.path == "ctx/Dockerfile"


# -- directives --------------------------------------------------------------------------------


def test_directives_are_read_at_the_top() -> None:
    result = parse("# syntax = docker/dockerfile:1\n#ESCAPE=`\n# check=skip=all\nFROM a\n")
    assert [(d.name, d.value, d.line) for d in result.directives] == [
        ("syntax", "docker/dockerfile:1", 1),
        ("escape", "`", 2),
        ("check", "skip=all", 3),
    ]
    assert result.directive("SYNTAX") == "docker/dockerfile:1"
    assert result.directive("nope") is None
    assert result.escape == "`"


@pytest.mark.parametrize(
    "text",
    [
        "# comment\n# escape=`\nFROM a\n",
        "\n# escape=`\nFROM a\n",
        "# unknown=1\n# escape=`\nFROM a\n",
        "FROM a\n# escape=`\n",
        "# escape =\n# escape=`\nFROM a\n",
    ],
)
def test_directive_scanning_stops_at_the_first_other_line(text: str) -> None:
    result = parse(text)
    assert result.escape == "\\"
    assert result.directive("escape") is None


def test_backtick_escape_changes_continuation_and_keeps_backslashes() -> None:
    text = "# escape=`\nFROM image\nENV GOPATH `\n\\go\nRUN dir c:\\ `\n  /b\n"
    assert dumped(text) == [
        '(from "image")',
        '(env "GOPATH" "\\\\go" "")',
        '(run "dir c:\\\\   /b")',
    ]


def test_repeated_directive_is_an_error() -> None:
    with pytest.raises(DockerfileSyntaxError) as info:
        parse("# syntax=a\n# Syntax=b\nFROM a\n")
    assert str(info.value) == (
        "Dockerfile:2: only one syntax parser directive can be used; remove this one | # Syntax=b"
    )
    assert (info.value.line, info.value.end_line) == (2, 2)


def test_invalid_escape_token() -> None:
    with pytest.raises(DockerfileSyntaxError, match=r"^Dockerfile:1: invalid escape token '/'"):
        parse("# escape=/\nFROM a\n")


# -- flags -------------------------------------------------------------------------------------


def test_flags_follow_buildkit() -> None:
    assert dumped(
        "FROM scratch\nCOPY --user=me --doit=true foo /tmp/\nCOPY --doit=true -- foo /tmp/\n"
        'COPY -- --notaflag /tmp/\nCMD --doit [ "a", "b" ]\nCMD --doit -- [ ]\n'
    ) == [
        '(from "scratch")',
        '(copy ["--user=me" "--doit=true"] "foo" "/tmp/")',
        '(copy ["--doit=true"] "foo" "/tmp/")',
        '(copy "--notaflag" "/tmp/")',
        '(cmd ["--doit"] "a" "b")',
        '(cmd ["--doit"])',
    ]


def test_flag_quotes_and_backslashes_are_removed() -> None:
    (_, node) = parse(
        'FROM a\nRUN --mount="type=bind,target=/a b" --x=\'q\' --y=a\\ b --z="" true\n'
    ).nodes
    assert node.flags == ("--mount=type=bind,target=/a b", "--x=q", "--y=a b", "--z=")
    assert node.args == ("true",)


def test_flags_read_bytes_as_buildkit_does() -> None:
    # buildkit walks flags byte by byte: a non-ASCII byte reads as Latin-1 and 0xA0 is a space
    (_, node) = parse("FROM a\nCOPY --chown=jörg a b\n").nodes
    assert node.flags == ("--chown=jÃ¶rg",)
    assert node.args == ("a", "b")


# -- argument forms ----------------------------------------------------------------------------


def test_exec_and_shell_forms() -> None:
    result = parse('FROM a\nRUN ["echo", "hi"]\nRUN echo hi\nCMD []\nCMD [""]\n')
    run_exec, run_shell, cmd_empty, cmd_blank = result.nodes[1:]
    assert (run_exec.args, run_exec.json) == (("echo", "hi"), True)
    assert (run_shell.args, run_shell.json) == (("echo hi",), False)
    assert (cmd_empty.args, cmd_empty.json) == ((), True)
    assert (cmd_blank.args, cmd_blank.json) == (("",), True)


@pytest.mark.parametrize(
    "rest",
    [
        "['single', 'quotes']",
        '["unterminated", "bracket"',
        '["unterminated string]',
        '"[\\"json\\", \\"in a string\\"]"',
        "[NaN]",
        "[1e400]",
        '["a"] trailing',
    ],
)
def test_text_that_is_not_json_falls_back_to_shell_form(rest: str) -> None:
    (_, node) = parse(f"FROM a\nCMD {rest}\n").nodes
    assert node.args == (rest,)
    assert not node.json


@pytest.mark.parametrize("rest", ['["a", 1]', "[[]]", '["a", null]', '[{"k": "v"}]', "[true]"])
def test_json_with_non_strings_is_an_error(rest: str) -> None:
    with pytest.raises(DockerfileSyntaxError) as info:
        parse(f"FROM a\nRUN {rest}\n")
    assert "arrays must be comprised of strings only" in info.value.problem
    assert info.value.line == 2
    assert info.value.text == f"RUN {rest}"


def test_json_escapes_are_decoded() -> None:
    (_, node) = parse('FROM a\nCMD ["\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0000", "\\ud800"]\n').nodes
    assert node.args == ('" \\ / \b \f \n \r \t \x00', "\ufffd")


def test_copy_add_volume_take_json_or_words() -> None:
    assert args('FROM a\nCOPY [ "test file", "/tmp" ]\nADD\t\ta  b\t/c\nVOLUME /a /b\n')[1:] == [
        ("test file", "/tmp"),
        ("a", "b", "/c"),
        ("/a", "/b"),
    ]


def test_env_and_label_pairs() -> None:
    assert dumped(
        "FROM a\nENV name value with  spaces\nENV a=1 b=\"two words\" c=x\\ y\nLABEL k='v v'\n"
    )[1:] == [
        '(env "name" "value with  spaces" "")',
        '(env "a" "1" "=" "b" "\\"two words\\"" "=" "c" "x\\\\ y" "=")',
        '(label "k" "\'v v\'" "=")',
    ]
    assert args("FROM a\nENV\n")[1] == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ENV PATH", "ENV must have two arguments"),
        ("LABEL only", "LABEL must have two arguments"),
        ("ENV a=1 b", "ENV syntax error: can't find '=' in 'b'"),
        ("LABEL a=1 'b c'", "LABEL syntax error: can't find '=' in \"'b c'\""),
    ],
)
def test_env_and_label_errors(text: str, problem: str) -> None:
    with pytest.raises(DockerfileSyntaxError) as info:
        parse(f"FROM a\n{text}\n", "df")
    assert info.value.problem.startswith(problem)
    assert str(info.value).startswith(f"df:2: {problem}")
    assert str(info.value).endswith(f" | {text}")


def test_arg_keeps_quotes_words() -> None:
    assert args('ARG foo bar=baz\nFROM a\nARG abc="123 456" def\n') == [
        ("foo", "bar=baz"),
        ("a",),
        ('abc="123 456"', "def"),
    ]


def test_single_string_and_whitespace_instructions() -> None:
    assert args(
        "FROM a AS  b\nUSER  docker:root \nWORKDIR /a b\nEXPOSE 80  443/udp\nSTOPSIGNAL 9\n"
        "MAINTAINER me <me@x>\n"
    ) == [
        ("a", "AS", "b"),
        ("docker:root",),
        ("/a b",),
        ("80", "443/udp"),
        ("9",),
        ("me <me@x>",),
    ]


def test_healthcheck_arguments() -> None:
    assert dumped(
        "FROM a\nHEALTHCHECK\nHEALTHCHECK NONE\nHEALTHCHECK --interval=5s CMD /check --quiet\n"
        'HEALTHCHECK CMD ["foo", "bar"]\nHEALTHCHECK CONNECT TCP 7000\n'
    )[1:] == [
        "(healthcheck)",
        '(healthcheck "NONE")',
        '(healthcheck ["--interval=5s"] "CMD" "/check --quiet")',
        '(healthcheck "CMD" "foo" "bar")',
        '(healthcheck "CONNECT" "TCP 7000")',
    ]
    assert parse('FROM a\nHEALTHCHECK CMD ["x"]\n').nodes[1].json


def test_onbuild_nests_the_trigger() -> None:
    result = parse("FROM a\nONBUILD RUN echo test\nONBUILD\nonbuild copy . /\n")
    assert dump(result.nodes).splitlines()[1:] == [
        '(onbuild (run "echo test"))',
        "(onbuild)",
        '(onbuild (copy "." "/"))',
    ]
    child = result.nodes[1].child
    assert isinstance(child, Node)
    assert (child.keyword, child.args, child.original) == ("RUN", ("echo test",), "RUN echo test")


def test_unknown_instructions_are_kept_for_the_next_step() -> None:
    assert dumped("FROM a\nFROBNICATE the thing\n") == ['(from "a")', '(frobnicate "")']


# -- heredocs ----------------------------------------------------------------------------------

HEREDOC_FILE = """FROM alpine:3.6
RUN <<EMPTY
EMPTY
RUN 3<<EMPTY2
EMPTY2
RUN "<<NOHEREDOC"
RUN <<INDENT
\tfoo
\tbar
INDENT
RUN <<-UNINDENT
\tbaz
\tquux
\tUNINDENT
RUN <<-'NOEXPAND'
\tdon't expand $NAME
NOEXPAND
RUN <<COMMENT
# internal comment
echo foo bar # trailing comment
COMMENT
RUN --mount=type=cache,target=/foo <<MOUNT
echo hello
MOUNT
COPY <<FILE1 <<FILE2 /dest
content 1
FILE1
content 2
FILE2
COPY <<X <<Y /dest
Y
X
X
Y
RUN <<COMPLEX python3
print('hello world')
COMPLEX
RUN <<eo'f'
echo foo
eof
RUN <<eo\\'f
echo foo
eo'f
RUN <<'e'o\\'f
echo foo
eo'f
RUN <<'one two'
echo bar
one two
RUN <<$EOF
$EOF
RUN <<  EOF  > foo
EOF
USER <<INVALID
"""


def test_heredocs_are_extracted_like_buildkit() -> None:
    nodes = parse(HEREDOC_FILE).nodes
    found = [[(h.name, h.content, h.expand, h.chomp, h.fd) for h in n.heredocs] for n in nodes]
    assert found == [
        [],
        [("EMPTY", "", True, False, 0)],
        [("EMPTY2", "", True, False, 3)],
        [],
        [("INDENT", "\tfoo\n\tbar\n", True, False, 0)],
        [("UNINDENT", "\tbaz\n\tquux\n", True, True, 0)],
        [("NOEXPAND", "\tdon't expand $NAME\n", False, True, 0)],
        [("COMMENT", "# internal comment\necho foo bar # trailing comment\n", True, False, 0)],
        [("MOUNT", "echo hello\n", True, False, 0)],
        [("FILE1", "content 1\n", True, False, 0), ("FILE2", "content 2\n", True, False, 0)],
        [("X", "Y\n", True, False, 0), ("Y", "X\n", True, False, 0)],
        [("COMPLEX", "print('hello world')\n", True, False, 0)],
        [("eof", "echo foo\n", False, False, 0)],
        [("eo'f", "echo foo\n", True, False, 0)],
        [("eo'f", "echo foo\n", False, False, 0)],
        [("one two", "echo bar\n", False, False, 0)],
        [("$EOF", "", True, False, 0)],
        [("EOF", "", True, False, 0)],
        [],
    ]
    assert nodes[9].args == ("<<FILE1", "<<FILE2", "/dest")
    assert [(n.start_line, n.end_line) for n in nodes[:3]] == [(1, 1), (2, 3), (4, 5)]


def test_heredocs_need_shell_form() -> None:
    nodes = parse('FROM a\nRUN ["<<EOF"]\nRUN ["<<\'EOF\'"]\nRUN whoami\n').nodes
    assert all(not n.heredocs for n in nodes)


def test_heredoc_inside_onbuild() -> None:
    (_, node) = parse("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n").nodes
    assert [h.name for h in node.heredocs] == ["EOF"]
    assert node.end_line == 4


def test_heredoc_content_keeps_line_endings() -> None:
    (_, node) = parse("FROM a\r\nRUN <<EOF\r\nhi\r\nEOF\r\n").nodes
    assert node.heredocs[0].content == "hi\r\n"


def test_unterminated_heredoc_names_the_instruction() -> None:
    with pytest.raises(DockerfileSyntaxError) as info:
        parse("FROM a\nRUN <<EOF\necho hi\n", "Dockerfile.test")
    message = str(info.value)
    assert message.startswith("Dockerfile.test:2: unterminated heredoc")
    assert message.endswith("| RUN <<EOF")
    assert (info.value.line, info.value.end_line) == (2, 3)


@pytest.mark.parametrize(
    "word", ["<<EOF", "<<'EOF'", '<<"EOF"', "<<-EOF", "<<-'EOF'", '<<-"EOF"', '<<EO"F"', "<< EOF"]
)
def test_parse_heredoc_accepts(word: str) -> None:
    heredoc = parse_heredoc(word)
    assert heredoc is not None
    assert heredoc.name == "EOF"
    assert heredoc.chomp == word.startswith("<<-")
    assert heredoc.expand == ("'" not in word and '"' not in word)


@pytest.mark.parametrize("word", ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"])
def test_parse_heredoc_rejects(word: str) -> None:
    assert parse_heredoc(word) is None


@pytest.mark.parametrize("word", ["<<'EOF", '<<"EOF', "<<EOF'", '<<EOF"'])
def test_parse_heredoc_with_unbalanced_quotes_is_an_error(word: str) -> None:
    with pytest.raises(DockerfileSyntaxError, match="unmatched"):
        parse_heredoc(word)


def test_chomp_removes_leading_tabs_only() -> None:
    assert chomp_heredoc("\thello\n\t\tworld\n  keep\n") == "hello\nworld\n  keep\n"
    assert Heredoc("X", "\ta\n", chomp=True).chomped() == "a\n"
    assert Heredoc("X", "\ta\n").chomped() == "\ta\n"


# -- errors ------------------------------------------------------------------------------------


def test_errors_are_dockerfile_errors_and_pickle() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nCMD [1]\n", "x/Dockerfile")
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)
    assert (copy.path, copy.line, copy.text) == ("x/Dockerfile", 2, "CMD [1]")


def test_error_without_location_is_just_the_problem() -> None:
    assert str(DockerfileSyntaxError("bad thing")) == "bad thing"
    assert str(DockerfileSyntaxError("bad", "f", None)) == "f: bad"


# -- properties --------------------------------------------------------------------------------

_PLAIN = st.text(
    alphabet=st.characters(
        min_codepoint=0x21,
        max_codepoint=0x7E,
        exclude_characters="\\[<#-\"'",
    ),
    min_size=1,
    max_size=20,
)


@given(st.lists(st.lists(_PLAIN, min_size=1, max_size=4), min_size=1, max_size=5))
def test_shell_form_run_round_trips(commands: list[list[str]]) -> None:
    lines = ["FROM scratch", *("RUN " + " ".join(words) for words in commands)]
    result = parse("\n".join(lines) + "\n")
    assert [n.args for n in result.nodes[1:]] == [(" ".join(w),) for w in commands]
    expected = ['(from "scratch")', *(f"(run {go_quote(' '.join(w))})" for w in commands)]
    assert dump(result.nodes) == "\n".join(expected) + "\n"


@given(st.lists(st.text(max_size=10), max_size=4))
def test_exec_form_round_trips_through_json(argv: list[str]) -> None:
    import json

    (_, node) = parse("FROM a\nCMD " + json.dumps(argv) + "\n").nodes
    assert node.json
    expected = tuple("".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in a) for a in argv)
    assert node.args == expected


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_a_dockerfile_error(text: str) -> None:
    try:
        result = parse("FROM a\n" + text)
    except DockerfileError:
        return
    assert dump(result.nodes).startswith('(from "a")')
    assert all(1 <= n.start_line <= n.end_line for n in result.nodes)
