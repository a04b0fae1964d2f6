"""Variable substitution: the shell lexer's table tests and docker's scoping rules per stage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_minidock.dockerfile.expand import (
    PROXY_ARGS,
    expand_from,
    expand_stage,
    global_args,
    platform_args,
    unconsumed_build_args,
)
from pytest_minidock.dockerfile.flags import CacheMount, TmpfsMount
from pytest_minidock.dockerfile.instructions import (
    Add,
    Arg,
    ArgDecl,
    Copy,
    Env,
    Expose,
    KeyValue,
    Label,
    Run,
    SourceContent,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from pytest_minidock.dockerfile.shell import (
    Lexer,
    _pattern_regex,
    _reverse_pattern,
    expand_word,
    expand_words,
)
from pytest_minidock.dockerfile.stages import parse_dockerfile
from pytest_minidock.errors import DockerfileSyntaxError

# -- the lexer: buildkit's envVarTest cases, environment PWD=/home SHELL=bash KOREAN=한국어 --------

ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}
ERROR = None

WORD_CASES: list[tuple[str, str | None]] = [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he'llo", ERROR),
    ("he\\'llo", "he'llo"),
    ("he\\\\'llo", ERROR),
    ("abc\\tdef", "abctdef"),
    ('"abc\\tdef"', "abc\\tdef"),
    ('"abc\\\\tdef"', "abc\\tdef"),
    ("'abc\\tdef'", "abc\\tdef"),
    ("hello\\", "hello"),
    ("hello\\\\", "hello\\"),
    ('"hello', ERROR),
    ('"hello\\"', ERROR),
    ('"hel\'lo"', "hel'lo"),
    ("'hello", ERROR),
    ("'hello\\'", "hello\\"),
    ("'hello\\there'", "hello\\there"),
    ("'hello\\\\there'", "hello\\\\there"),
    ("\"''\"", "''"),
    ("$.", "$."),
    ("he$1x", "hex"),
    ("he$.x", "he$.x"),
    ("he$pwd.", "he."),
    ("he$PWD", "he/home"),
    ("he\\$PWD", "he$PWD"),
    ("he\\\\$PWD", "he\\/home"),
    ('"he\\$PWD"', "he$PWD"),
    ('"he\\\\$PWD"', "he\\/home"),
    ("\\${}", "${}"),
    ("\\${}aaa", "${}aaa"),
    ("he\\${}", "he${}"),
    ("he\\${}xx", "he${}xx"),
    ("${}", ERROR),
    ("${}aaa", ERROR),
    ("he${}", ERROR),
    ("he${}xx", ERROR),
    ("he${hi}", "he"),
    ("he${hi}xx", "hexx"),
    ("he${PWD}", "he/home"),
    ("he${.}", ERROR),
    ("he${XXX:-000}xx", "he000xx"),
    ("he${PWD:-000}xx", "he/homexx"),
    ("he${XXX:-$PWD}xx", "he/homexx"),
    ("he${XXX:-${PWD:-yyy}}xx", "he/homexx"),
    ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
    ("he${XXX:YYY}", ERROR),
    ("he${XXX:+${PWD}}xx", "hexx"),
    ("he${PWD:+${XXX}}xx", "hexx"),
    ("he${PWD:+${SHELL}}xx", "hebashxx"),
    ("he${XXX:+000}xx", "hexx"),
    ("he${PWD:+000}xx", "he000xx"),
    ("'he${XX}'", "he${XX}"),
    ('"he${PWD}"', "he/home"),
    ("\"he'$PWD'\"", "he'/home'"),
    ('"$PWD"', "/home"),
    ("'$PWD'", "$PWD"),
    ("'\\$PWD'", "\\$PWD"),
    ("'\"hello\"'", '"hello"'),
    ("'he\\$PWD'", "he\\$PWD"),
    ("he${PWD", ERROR),
    ("he${PWD:=000}xx", ERROR),
    ("he${PWD:+${PWD}:}xx", "he/home:xx"),
    ("he${XXX:-\\$PWD:}xx", "he$PWD:xx"),
    ("he${XXX:-\\${PWD}z}xx", "he${PWDz}xx"),
    ("안녕하세요", "안녕하세요"),
    ("안'녕'하세요", "안녕하세요"),
    ("안'녕하세요", ERROR),
    ("안녕\\'하세요", "안녕'하세요"),
    ('"안녕\'하세요"', "안녕'하세요"),
    ("안녕$KOREAN", "안녕한국어"),
    ("${{aaa}", ERROR),
    ("${aaa}}", "}"),
    ("${aaa", ERROR),
    ("${{aaa:-bbb}", ERROR),
    ("${aaa:-bbb}}", "bbb}"),
    ("${aaa:-bbb", ERROR),
    ("${aaa:-bbb}", "bbb"),
    ("${aaa:-${bbb:-ccc}}", "ccc"),
    ("${aaa:-bbb ${foo}", ERROR),
    ("${aaa:-bbb {foo}", "bbb {foo"),
    ("${:}", ERROR),
    ("${:-bbb}", ERROR),
    ("${:+bbb}", ERROR),
    ("${NULL:-x}", "x"),
    ("${NULL-x}", ""),
    ("${NULL:+x}", ""),
    ("${NULL+x}", "x"),
    # positional and special parameters are never set
    ("$1", ""),
    ("${1:-bbb}", "bbb"),
    ("${1:+bbb}", ""),
    ("$999aaa", "aaa"),
    ("${001:-bbb}aaa", "bbbaaa"),
    ("$@", ""),
    ("$@@@", "@@"),
    ("${@:-bbb}aaa", "bbbaaa"),
    ("$*", ""),
    ("${#:-bbb}", "bbb"),
    ("$?", ""),
    ("${-}", ""),
    ("$$", ""),
    ("${$:-bbb}", "bbb"),
    ("$!", ""),
    ("$0", ""),
]


@pytest.mark.parametrize(("source", "expected"), WORD_CASES)
def test_word_expansion(source: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(DockerfileSyntaxError):
            expand_word(source, ENV)
    else:
        assert expand_word(source, ENV) == expected


MATCH_CASES: list[tuple[str, dict[str, str], str | None, set[str], set[str]]] = [
    ("x", {"DUMMY": "dummy"}, "x", set(), set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}),
    (
        "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
        {"FOO": "xxx", "BAR": ""},
        "xxx  ccc",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    (
        "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
        {"FOO": "xxx", "BAR": ""},
        "xxx bbb ccc",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    (
        "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
        {"FOO": "xxx", "BAR": ""},
        "aaa bbb ",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    (
        "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
        {"FOO": "xxx", "BAR": ""},
        "aaa  ",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    ("${FOO?aaa}", {"FOO": "xxx"}, "xxx", {"FOO"}, set()),
    ("${BAR?bbb}", {"BAR": ""}, "", {"BAR"}, set()),
    ("${BAZ?ccc}", {}, None, set(), set()),
    ("${FOO:?aaa}", {"FOO": "xxx"}, "xxx", {"FOO"}, set()),
    ("${BAR:?bbb}", {"BAR": ""}, None, set(), set()),
    ("${BAZ:?}", {}, None, set(), set()),
    ("${FOO=aaa}", {"FOO": "xxx"}, None, set(), set()),
    ("${FOO=}", {}, None, set(), set()),
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}, set()),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx", {"FOO"}, set()),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}, set()),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set()),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}, set()),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y", {"FOO"}, set()),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a", {"FOO"}, set()),
    ("${FOO%y*}", {"FOO": "xxyy"}, "xxy", {"FOO"}, set()),
    ("${FOO%%y*}", {"FOO": "xxyy"}, "xx", {"FOO"}, set()),
    (
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
        "/foo.*/*.txt - /foo..*.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
        "/tmp/bar.txt - /bar.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$N/$R}",
        {"FOO": "http://google.de", "N": "http://", "R": "https://"},
        "https://google.de",
        {"FOO", "N", "R"},
        set(),
    ),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt", {"FOO"}, set()),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy", {"FOO", "BAR"}, set()),
    ("${FOO//ww}", {"FOO": "xxyy"}, None, set(), set()),
    ("${FOO//}", {"FOO": "xxyy"}, None, set(), set()),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO///}", {}, "", set(), {"FOO"}),
    ("${FOO//x/$$-\\$0}", {"FOO": "axbx"}, "a-\\xb-\\x", {"FOO"}, {"$"}),
    ("${FOO#\\x}", {"FOO": "x"}, None, set(), set()),
]


@pytest.mark.parametrize(("source", "env", "expected", "matched", "unmatched"), MATCH_CASES)
def test_expansion_reports_matched_names(
    source: str, env: dict[str, str], expected: str | None, matched: set[str], unmatched: set[str]
) -> None:
    if expected is None:
        with pytest.raises(DockerfileSyntaxError):
            Lexer().process(source, env)
        return
    result = Lexer().process(source, env)
    assert result.result == expected
    assert result.matched == matched
    assert result.unmatched == unmatched


def test_release_name_with_platform_variables() -> None:
    release = (
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz"
    )
    env = {"VERSION": "v1.2.3", "TARGETOS": "linux", "TARGETARCH": "arm", "TARGETVARIANT": "v7"}
    assert expand_word(release, env) == "something-v1.2.3.linux-arm-v7.tar.gz"
    env["TARGETVARIANT"] = ""
    assert expand_word(release, env) == "something-v1.2.3.linux-arm.tar.gz"


def test_mandatory_variables() -> None:
    no_empty = "${VAR:?message here$ARG}"
    no_unset = "${VAR?message here$ARG}"
    assert expand_word(no_empty, {"VAR": "plain", "ARG": "x"}) == "plain"
    for env in ({"VAR": "", "ARG": "x"}, {"ARG": "x"}):
        with pytest.raises(DockerfileSyntaxError, match="VAR: message herex"):
            expand_word(no_empty, env)
    assert expand_word(no_unset, {"VAR": "", "ARG": "x"}) == ""
    with pytest.raises(DockerfileSyntaxError, match="VAR: message herex"):
        expand_word(no_unset, {"ARG": "x"})
    with pytest.raises(DockerfileSyntaxError, match="VAR: is not allowed to be unset"):
        expand_word("${VAR?}", {})
    with pytest.raises(DockerfileSyntaxError, match="VAR: is not allowed to be empty"):
        expand_word("${VAR:?}", {"VAR": ""})


WORDS_ENV = {"hi": "hi", "space": "abc  def", "leading": "  ab c", "trailing": "ab c   "}


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("hello", ["hello"]),
        ("hello${hi}bye", ["hellohibye"]),
        ("hello${unset}bye", ["hellobye"]),
        ("hello${space}bye", ["helloabc", "defbye"]),
        ('hello"${space}"bye', ["helloabc  defbye"]),
        ('hello "${space}"bye', ["hello", "abc  defbye"]),
        ("hello${leading}def", ["hello", "ab", "cdef"]),
        ('hello"${leading}" def', ["hello  ab c", "def"]),
        ("hello${leading}", ["hello", "ab", "c"]),
        ("hello${trailing}d", ["helloab", "c", "d"]),
        ('hel"lo${trailing}"', ["helloab c   "]),
        ('hello" there  "', ["hello there  "]),
        ("hello   there", ["hello", "there"]),
        ("hello\\ there", ["hello there"]),
        ('hello\\" there', ['hello"', "there"]),
        ('hello"\\\\there"', ["hello\\there"]),
        ("hello'\\\\there'", ["hello\\\\there"]),
        ("hello'$there'", ["hello$there"]),
        ("''", []),
        ("a '' b", ["a", "b"]),
        ("${unset}", []),
        ("a << b", ["a", "<< b"]),  # buildkit keeps "<<" with its word, for heredocs
    ],
)
def test_word_splitting(source: str, words: list[str]) -> None:
    assert list(expand_words(source, WORDS_ENV)) == words


def test_unterminated_quote_in_words_is_an_error() -> None:
    with pytest.raises(DockerfileSyntaxError, match="unmatched double quote"):
        expand_words('hello" there', WORDS_ENV)


def test_lexer_modes() -> None:
    raw = Lexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    assert raw.words("RUN <<'EOF' \\$x ${y:-z} $w", {"w": "W"}) == (
        "RUN",
        "<<'EOF'",
        "\\$x",
        "${y:-z}",
        "W",
    )
    assert raw.word("${u/a/b} ${u#x}", {}) == "${u/a/b} ${u#x}"
    heredoc = Lexer(skip_process_quotes=True)
    assert heredoc.word("echo '$hi' \"$hi\" \\$hi", {"hi": "HI"}) == "echo 'HI' \"HI\" $hi"
    backtick = Lexer(escape="`")
    assert backtick.word('a`$b c\\d `"q`"', {"b": "B"}) == 'a$b c\\d "q"'
    assert expand_word("\ufeffbom", {}) == "bom"


def test_shell_patterns() -> None:
    assert _pattern_regex("*", greedy=True, anchored=True).pattern == "^.*"
    assert _pattern_regex("?", greedy=True, anchored=True).pattern == "^."
    assert _pattern_regex("\\*", greedy=True, anchored=True).pattern == "^\\*"
    assert _pattern_regex("*", greedy=False, anchored=False).pattern == ".*?"
    assert _pattern_regex("(()[]{\\}^$.\\*\\?|\\\\", greedy=True, anchored=True).pattern == (
        "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\"
    )
    assert _reverse_pattern("a\\*c") == "c\\*a"
    assert _reverse_pattern("\\\\\\ab") == "b\\a\\\\"
    assert _reverse_pattern("ab\\") == "\\ba"
    assert _reverse_pattern("👽\\🚀🖖") == "🖖\\🚀👽"


@given(
    st.text(alphabet=st.characters(exclude_characters="$'\"\\\ufeff", exclude_categories=("Cs",)))
)
def test_text_without_special_characters_is_unchanged(text: str) -> None:
    assert expand_word(text, {"A": "1"}) == text


@given(
    st.text(alphabet=st.characters(exclude_characters="$'\"\\<\ufeff", exclude_categories=("Cs",)))
)
def test_words_without_special_characters_split_at_white_space(text: str) -> None:
    from pytest_minidock.dockerfile._go import GO_SPACE

    expected = [w for w in "".join(" " if c in GO_SPACE else c for c in text).split(" ") if w]
    assert list(expand_words(text, {})) == expected


@given(st.text(alphabet="abc$ {}:-+/", max_size=30))
def test_expansion_never_fails_unexpectedly(text: str) -> None:
    with contextlib.suppress(DockerfileSyntaxError):
        expand_word(text, {"a": "x y", "b": ""})


# -- scoping -----------------------------------------------------------------------------------


def steps(text: str, build_args: dict[str, str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    df = parse_dockerfile(text)
    return expand_stage(df, df.target, build_args, **kw).steps  # type: ignore[arg-type]


def test_platform_args() -> None:
    assert platform_args() == {
        "BUILDPLATFORM": "linux/amd64",
        "BUILDOS": "linux",
        "BUILDOSVERSION": "",
        "BUILDARCH": "amd64",
        "BUILDVARIANT": "",
        "TARGETPLATFORM": "linux/amd64",
        "TARGETOS": "linux",
        "TARGETOSVERSION": "",
        "TARGETARCH": "amd64",
        "TARGETVARIANT": "",
    }
    arm = platform_args("linux/arm/v7", "linux/amd64")
    assert (arm["TARGETARCH"], arm["TARGETVARIANT"], arm["BUILDARCH"]) == ("arm", "v7", "amd64")


def test_from_sees_global_and_platform_args_only() -> None:
    df = parse_dockerfile(
        "ARG TAG=3.19\nARG REG\n"
        "FROM --platform=$BUILDPLATFORM ${REG:-docker.io}/alpine:${TAG} AS a\n"
        "ARG LATE=x\nFROM ${LATE:-none}-${TARGETARCH}\n"
    )
    base, platform, used = expand_from(df, df.stages[0])
    assert (base, platform) == ("docker.io/alpine:3.19", "linux/amd64")
    assert used == (("BUILDPLATFORM", "linux/amd64"), ("TAG", "3.19"))
    assert expand_from(df, df.stages[1])[0] == "none-amd64"
    base, _, used = expand_from(df, df.stages[0], {"REG": "localhost:5000", "TAG": "edge"})
    assert base == "localhost:5000/alpine:edge"
    assert ("REG", "localhost:5000") in used


def test_global_args_resolution() -> None:
    df = parse_dockerfile("ARG A=1\nARG B=${A}2 C\nARG TARGETARCH\nFROM x\n")
    values = global_args(df, {"C": "c"})
    assert (values["A"], values["B"], values["C"], values["TARGETARCH"]) == (
        "1",
        "12",
        "c",
        "amd64",
    )
    assert global_args(df, {"A": "9", "TARGETARCH": "arm64"})["B"] == "92"
    assert global_args(df, {"TARGETARCH": "arm64"})["TARGETARCH"] == "arm64"
    assert global_args(df, platform="linux/arm64")["TARGETPLATFORM"] == "linux/arm64"


def test_blank_base_and_platform_are_errors() -> None:
    df = parse_dockerfile("ARG IMAGE\nFROM $IMAGE\n")
    with pytest.raises(DockerfileSyntaxError) as info:
        expand_stage(df, 0)
    assert str(info.value).startswith("Dockerfile:2: base name ($IMAGE) should not be blank")
    df = parse_dockerfile("ARG P\nFROM --platform=$P alpine\n")
    with pytest.raises(DockerfileSyntaxError, match="Dockerfile:2: empty platform value"):
        expand_stage(df, 0)
    df = parse_dockerfile('ARG A="${B:?B is required}"\nFROM x\n')
    with pytest.raises(DockerfileSyntaxError, match=r"^Dockerfile:1: B: B is required"):
        expand_stage(df, 0)


def test_global_args_are_invisible_in_a_stage_until_redeclared() -> None:
    result = steps(
        "ARG V=1\nARG TARGETARCH\nFROM x\nWORKDIR /$V\nARG V\nWORKDIR /$V\nARG TARGETARCH\n"
        "WORKDIR /$TARGETARCH\nWORKDIR /$BUILDOS\n"
    )
    paths = [s.instruction.path for s in result if isinstance(s.instruction, Workdir)]
    assert paths == ["/", "/1", "/amd64", "/"]


def test_arg_values_come_from_build_args_then_defaults_then_globals() -> None:
    text = "ARG G=global\nFROM x\nARG A=default B G\nARG C=$A-$B-$G\nUSER $C\n"
    assert steps(text)[-1].instruction == User(
        location=steps(text)[-1].instruction.location, user="default--global"
    )
    expanded = steps(text, {"A": "cli", "B": "b", "G": "gcli"})
    assert isinstance(expanded[0].instruction, Arg)
    assert expanded[0].instruction.args == (
        ArgDecl("A", "cli"),
        ArgDecl("B", "b"),
        ArgDecl("G", "gcli"),
    )
    user = expanded[-1].instruction
    assert isinstance(user, User)
    assert user.user == "cli-b-gcli"


def test_arg_is_in_scope_from_its_declaration() -> None:
    result = steps("FROM x\nUSER ${user:-some_user}\nARG user\nUSER $user\n", {"user": "what_user"})
    users = [s.instruction.user for s in result if isinstance(s.instruction, User)]
    assert users == ["some_user", "what_user"]


def test_arg_without_value_keeps_an_earlier_value() -> None:
    result = steps("FROM x\nARG A=1\nARG A\nWORKDIR /$A\n")
    workdir = result[-1].instruction
    assert isinstance(workdir, Workdir)
    assert workdir.path == "/1"


def test_env_wins_over_arg_in_either_order() -> None:
    result = steps(
        "FROM x\nARG V\nENV V=v1.0.0\nRUN echo $V\nLABEL a=$V\nARG V=late\nLABEL b=$V\n",
        {"V": "v2.0.1"},
    )
    run, label_a, label_b = result[2], result[3], result[5]
    assert run.run_env == ()
    assert run.args == ()
    assert isinstance(label_a.instruction, Label)
    assert label_a.instruction.pairs == (KeyValue("a", "v1.0.0"),)
    assert isinstance(label_b.instruction, Label)
    assert label_b.instruction.pairs == (KeyValue("b", "v1.0.0"),)


def test_env_can_pass_an_arg_on() -> None:
    result = steps("FROM x\nARG VER\nENV VER=${VER:-v1.0.0}\nWORKDIR /$VER\n", {"VER": "v2"})
    env = result[1].instruction
    assert isinstance(env, Env)
    assert env.pairs == (KeyValue("VER", "v2"),)
    assert result[1].args == (("VER", "v2"),)


def test_pairs_of_one_env_see_the_environment_before_it() -> None:
    result = steps("FROM x\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n")
    assert [s.instruction.pairs for s in result if isinstance(s.instruction, Env)] == [
        (KeyValue("abc", "hello"),),
        (KeyValue("abc", "bye"), KeyValue("def", "hello")),
        (KeyValue("ghi", "bye"),),
    ]


def test_env_and_label_values_lose_their_quotes() -> None:
    result = steps(
        'FROM x\nENV A="a b" B=c\\ d C=\'$x\'\nLABEL "key one"="v 1"\nENV LEGACY  "quoted"  x\n'
    )
    assert result[0].instruction.pairs == (  # type: ignore[attr-defined]
        KeyValue("A", "a b"),
        KeyValue("B", "c d"),
        KeyValue("C", "$x"),
    )
    assert result[1].instruction.pairs == (KeyValue("key one", "v 1"),)  # type: ignore[attr-defined]
    assert result[2].instruction.pairs == (KeyValue("LEGACY", "quoted  x"),)  # type: ignore[attr-defined]


def test_base_image_environment_is_in_scope_and_wins() -> None:
    result = steps(
        "FROM x\nARG PATH=/nope\nENV PATH=/opt/bin:$PATH\nRUN true\n",
        base_env=["PATH=/usr/bin:/bin", "EMPTY"],
    )
    env = result[1].instruction
    assert isinstance(env, Env)
    assert env.pairs == (KeyValue("PATH", "/opt/bin:/usr/bin:/bin"),)
    assert result[2].run_env == ()


def test_run_uses_every_arg_in_effect() -> None:
    result = steps(
        "FROM x\nRUN one\nARG A=1 B\nRUN two\nARG C=3\nCOPY $A /dst\nRUN three\n",
        {"B": "b", "HTTP_PROXY": "http://proxy:3128", "no_proxy": "localhost"},
    )
    one, _, two, _, copy, three = result
    assert one.args == ()
    assert one.run_env == (("HTTP_PROXY", "http://proxy:3128"), ("no_proxy", "localhost"))
    assert two.args == (("A", "1"), ("B", "b"))
    assert three.args == (("A", "1"), ("B", "b"), ("C", "3"))
    assert three.run_env == (
        *three.args,
        ("HTTP_PROXY", "http://proxy:3128"),
        ("no_proxy", "localhost"),
    )
    assert copy.args == (("A", "1"),)
    assert copy.run_env == ()


def test_declared_proxy_arg_counts_like_any_arg() -> None:
    result = steps("FROM x\nARG HTTP_PROXY\nRUN true\n", {"HTTP_PROXY": "http://p"})
    assert result[1].args == (("HTTP_PROXY", "http://p"),)
    assert result[1].run_env == (("HTTP_PROXY", "http://p"),)
    assert "HTTP_PROXY" in PROXY_ARGS


def test_arg_step_uses_what_it_declares() -> None:
    result = steps("FROM x\nARG A=1\nARG B=${A}2 C\n")
    assert result[0].args == (("A", "1"),)
    assert result[1].args == (("A", "1"), ("B", "12"))
    assert result[1].instruction.args == (ArgDecl("B", "12"), ArgDecl("C"))  # type: ignore[attr-defined]
    assert result[1].original.args == (ArgDecl("B", "${A}2"), ArgDecl("C"))  # type: ignore[attr-defined]


def test_copy_add_expand_everything_but_quoted_heredocs() -> None:
    text = (
        "FROM x\nARG D=/dst F=stage U=1000 M=0755 X=*.tmp S=sha256:abc\n"
        "COPY --from=$F --chown=$U:$U --chmod=$M --exclude=$X <<A <<'B' src/$D $D/\n"
        "$U \"quoted\" '$M'\nA\n$U\nB\n"
        "ADD --checksum=$S https://x/$U.tgz $D\n"
    )
    result = steps(text)
    copy = result[1].instruction
    assert isinstance(copy, Copy)
    assert (copy.from_, copy.chown, copy.chmod, copy.excludes) == (
        "stage",
        "1000:1000",
        "0755",
        ("*.tmp",),
    )
    assert (copy.sources, copy.dest) == (("src//dst",), "/dst/")
    assert copy.contents == (
        SourceContent("A", "1000 \"quoted\" '0755'\n", expand=True),
        SourceContent("B", "$U\n", expand=False),
    )
    add = result[2].instruction
    assert isinstance(add, Add)
    assert (add.checksum, add.sources, add.dest) == ("sha256:abc", ("https://x/1000.tgz",), "/dst")


def test_simple_instructions_expand() -> None:
    result = steps(
        "FROM x\nARG P=8080 S=SIGINT U=app V=/data\nEXPOSE $P ${P}/udp\nSTOPSIGNAL $S\nUSER $U\n"
        "VOLUME $V /other\nWORKDIR $V/app\nRUN echo $P\nCMD echo $P\n"
    )
    expose, signal, user, volume, workdir, run, cmd = (s.instruction for s in result[1:])
    assert isinstance(expose, Expose)
    assert expose.ports == ("8080", "8080/udp")
    assert isinstance(signal, StopSignal)
    assert signal.signal == "SIGINT"
    assert isinstance(user, User)
    assert user.user == "app"
    assert isinstance(volume, Volume)
    assert volume.paths == ("/data", "/other")
    assert isinstance(workdir, Workdir)
    assert workdir.path == "/data/app"
    assert run == result[6].original  # RUN and CMD commands are left to the shell
    assert cmd == result[7].original


def test_expose_splits_words_after_expansion() -> None:
    result = steps('FROM x\nARG PORTS="80 443"\nEXPOSE $PORTS\n')
    expose = result[1].instruction
    assert isinstance(expose, Expose)
    assert expose.ports == ("80", "443")
    with pytest.raises(DockerfileSyntaxError, match="Dockerfile:2: EXPOSE has no ports"):
        steps("FROM x\nEXPOSE $NOTHING\n")


def test_volume_that_expands_to_nothing_is_an_error() -> None:
    with pytest.raises(
        DockerfileSyntaxError, match="Dockerfile:3: VOLUME specified can not be an empty"
    ):
        steps("FROM x\nARG V\nVOLUME $V\n")


def test_run_mounts_are_expanded() -> None:
    result = steps(
        "FROM x\nARG T=cache DIR=/root/.cache MODE=0700\n"
        "RUN --mount=type=$T,target=$DIR,mode=$MODE --mount=type=tmpfs,target=${DIR}2 make\n"
    )
    run = result[1].instruction
    assert isinstance(run, Run)
    assert run.mounts == (
        CacheMount(
            target="/root/.cache",
            id="/root/.cache",
            mode=0o700,
            spec="type=$T,target=$DIR,mode=$MODE",
        ),
        TmpfsMount(target="/root/.cache2", spec="type=tmpfs,target=${DIR}2"),
    )
    original = result[1].original
    assert isinstance(original, Run)
    assert len(original.mounts) == 1  # the first mount's type was not known before expansion
    with pytest.raises(DockerfileSyntaxError, match=r"^Dockerfile:3: unsupported mount type 'nfs'"):
        steps("FROM x\nARG T=nfs\nRUN --mount=type=$T,target=/x true\n")


def test_expansion_errors_are_located() -> None:
    with pytest.raises(DockerfileSyntaxError) as info:
        steps("FROM x\nRUN true\nWORKDIR ${DIR:?set DIR with --build-arg}\n")
    assert str(info.value) == (
        "Dockerfile:3: DIR: set DIR with --build-arg in '${DIR:?set DIR with --build-arg}' | "
        "WORKDIR ${DIR:?set DIR with --build-arg}"
    )
    with pytest.raises(DockerfileSyntaxError, match=r"^Dockerfile:2: bad substitution"):
        steps("FROM x\nLABEL a=${}\n")
    with pytest.raises(DockerfileSyntaxError, match=r"^Dockerfile:2: unmatched single quote"):
        steps("FROM x\nCOPY 'a b' /c\n")


def test_backtick_escape_applies_to_expansion() -> None:
    result = steps("# escape=`\nFROM x\nENV A=1\nWORKDIR c:\\$A\\`$A\n")
    workdir = result[-1].instruction
    assert isinstance(workdir, Workdir)
    assert workdir.path == "c:\\1\\$A"


def test_expand_stage_by_name_or_index_and_target() -> None:
    df = parse_dockerfile("FROM a AS one\nENV X=1\nFROM b AS two\nWORKDIR /w\n")
    assert expand_stage(df, "ONE").base == "a"
    assert expand_stage(df, 1).stage.name == "two"
    expanded = expand_stage(df, df.target)
    assert (expanded.base, expanded.platform, expanded.from_args) == ("b", None, ())
    assert [s.instruction for s in expanded.steps] == list(df.target.instructions)


def test_unconsumed_build_args() -> None:
    df = parse_dockerfile("ARG A\nFROM x\nARG B\n")
    assert unconsumed_build_args(
        df, {"A": "1", "B": "2", "C": "3", "HTTP_PROXY": "p", "TARGETOS": "x"}
    ) == ("C",)


_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_./:", min_size=1, max_size=10)


@given(
    st.lists(
        st.tuples(st.sampled_from(["ENV a=", "LABEL b=", "WORKDIR /", "USER "]), _VALUE), max_size=8
    )
)
def test_dockerfile_without_variables_expands_to_itself(lines: list[tuple[str, str]]) -> None:
    text = "FROM x\n" + "".join(f"{prefix}{value}\n" for prefix, value in lines)
    df = parse_dockerfile(text)
    first = expand_stage(df, 0, {"a": "1"})
    assert [s.instruction for s in first.steps] == list(df.stages[0].instructions)
    assert all(s.args == () and s.run_env == () for s in first.steps)
    assert expand_stage(df, 0, {"a": "1"}) == first  # pure: same inputs, same result
