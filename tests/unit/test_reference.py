"""Tests for ``pytest_minidock.reference``: docker's reference grammar and normalisation.

The tables port the cases of github.com/distribution/reference (``reference_test.go`` and
``normalize_test.go``) to the normalised form docker's ``ParseNormalizedNamed`` gives.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_minidock.digest import Digest
from pytest_minidock.errors import InvalidDigest, InvalidReference, MinidockError
from pytest_minidock.reference import (
    DEFAULT_DOMAIN,
    MAX_PATH_LENGTH,
    MAX_TAG_LENGTH,
    Reference,
    is_image_id_prefix,
)

SHA_F = "sha256:" + "f" * 64
SHA_A = "sha256:" + "a" * 64
SHA512_F = "sha512:" + "f" * 128
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"

# -- valid references --------------------------------------------------------------------------

# (input, domain, path, tag, digest, str(), familiar())
VALID: list[tuple[str, str, str, str | None, str | None, str, str]] = [
    ("redis", "docker.io", "library/redis", None, None, "docker.io/library/redis", "redis"),
    (
        "redis:7",
        "docker.io",
        "library/redis",
        "7",
        None,
        "docker.io/library/redis:7",
        "redis:7",
    ),
    ("user/app:1", "docker.io", "user/app", "1", None, "docker.io/user/app:1", "user/app:1"),
    (
        "test_com",
        "docker.io",
        "library/test_com",
        None,
        None,
        "docker.io/library/test_com",
        "test_com",
    ),
    (
        "test_com/foo",
        "docker.io",
        "test_com/foo",
        None,
        None,
        "docker.io/test_com/foo",
        "test_com/foo",
    ),
    (
        "test.com:tag",
        "docker.io",
        "library/test.com",
        "tag",
        None,
        "docker.io/library/test.com:tag",
        "test.com:tag",
    ),
    (
        "test.com:5000",
        "docker.io",
        "library/test.com",
        "5000",
        None,
        "docker.io/library/test.com:5000",
        "test.com:5000",
    ),
    (
        "test.com/repo:tag",
        "test.com",
        "repo",
        "tag",
        None,
        "test.com/repo:tag",
        "test.com/repo:tag",
    ),
    ("test:8080/foo", "test:8080", "foo", None, None, "test:8080/foo", "test:8080/foo"),
    ("test:5000/repo", "test:5000", "repo", None, None, "test:5000/repo", "test:5000/repo"),
    (
        "test:5000/repo:tag",
        "test:5000",
        "repo",
        "tag",
        None,
        "test:5000/repo:tag",
        "test:5000/repo:tag",
    ),
    (
        f"test:5000/repo@{SHA_F}",
        "test:5000",
        "repo",
        None,
        SHA_F,
        f"test:5000/repo@{SHA_F}",
        f"test:5000/repo@{SHA_F}",
    ),
    (
        f"test:5000/repo:tag@{SHA_F}",
        "test:5000",
        "repo",
        "tag",
        SHA_F,
        f"test:5000/repo:tag@{SHA_F}",
        f"test:5000/repo:tag@{SHA_F}",
    ),
    (
        f"repo@{SHA_F}",
        "docker.io",
        "library/repo",
        None,
        SHA_F,
        f"docker.io/library/repo@{SHA_F}",
        f"repo@{SHA_F}",
    ),
    (
        f"name:tag@{SHA_A}",
        "docker.io",
        "library/name",
        "tag",
        SHA_A,
        f"docker.io/library/name:tag@{SHA_A}",
        f"name:tag@{SHA_A}",
    ),
    ("localhost/foo", "localhost", "foo", None, None, "localhost/foo", "localhost/foo"),
    (
        "localhost:5000/x:y",
        "localhost:5000",
        "x",
        "y",
        None,
        "localhost:5000/x:y",
        "localhost:5000/x:y",
    ),
    (
        "lowercase:Uppercase",
        "docker.io",
        "library/lowercase",
        "Uppercase",
        None,
        "docker.io/library/lowercase:Uppercase",
        "lowercase:Uppercase",
    ),
    (
        "a/" * 127 + "a:tag-puts-this-over-max",
        "docker.io",
        "a/" * 127 + "a",
        "tag-puts-this-over-max",
        None,
        "docker.io/" + "a/" * 127 + "a:tag-puts-this-over-max",
        "a/" * 127 + "a:tag-puts-this-over-max",
    ),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io/test.example.com/my-app:test.example.com",
    ),
    (
        "xn--n3h.com/myimage:xn--n3h.com",
        "xn--n3h.com",
        "myimage",
        "xn--n3h.com",
        None,
        "xn--n3h.com/myimage:xn--n3h.com",
        "xn--n3h.com/myimage:xn--n3h.com",
    ),
    (
        f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}",
        "xn--7o8h.com",
        "myimage",
        "xn--7o8h.com",
        SHA512_F,
        f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}",
        f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}",
    ),
    (
        "foo_bar.com:8080",
        "docker.io",
        "library/foo_bar.com",
        "8080",
        None,
        "docker.io/library/foo_bar.com:8080",
        "foo_bar.com:8080",
    ),
    (
        "foo/foo_bar.com:8080",
        "docker.io",
        "foo/foo_bar.com",
        "8080",
        None,
        "docker.io/foo/foo_bar.com:8080",
        "foo/foo_bar.com:8080",
    ),
    (
        "192.168.1.1",
        "docker.io",
        "library/192.168.1.1",
        None,
        None,
        "docker.io/library/192.168.1.1",
        "192.168.1.1",
    ),
    (
        "192.168.1.1:5000/repo:5050",
        "192.168.1.1:5000",
        "repo",
        "5050",
        None,
        "192.168.1.1:5000/repo:5050",
        "192.168.1.1:5000/repo:5050",
    ),
    ("192.168.1.1/repo", "192.168.1.1", "repo", None, None, "192.168.1.1/repo", "192.168.1.1/repo"),
    ("[::1]:5000/foo", "[::1]:5000", "foo", None, None, "[::1]:5000/foo", "[::1]:5000/foo"),
    (
        "[2001:db8::1]/repo",
        "[2001:db8::1]",
        "repo",
        None,
        None,
        "[2001:db8::1]/repo",
        "[2001:db8::1]/repo",
    ),
    (
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
        "[2001:db8:1:2:3:4:5:6]",
        "repo",
        "tag",
        None,
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
    ),
    (
        f"[2001:db8::1]:5000/repo:tag@{SHA_F}",
        "[2001:db8::1]:5000",
        "repo",
        "tag",
        SHA_F,
        f"[2001:db8::1]:5000/repo:tag@{SHA_F}",
        f"[2001:db8::1]:5000/repo:tag@{SHA_F}",
    ),
    (
        "[2001:db8::]:5000/repo",
        "[2001:db8::]:5000",
        "repo",
        None,
        None,
        "[2001:db8::]:5000/repo",
        "[2001:db8::]:5000/repo",
    ),
    (
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "[fc00:1:2:3:4:5:6:7]:5000",
        "library/debian",
        None,
        None,
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
    ),
    # docker.io normalisation (normalize_test.go: TestParseRepositoryInfo)
    ("fooo/bar", "docker.io", "fooo/bar", None, None, "docker.io/fooo/bar", "fooo/bar"),
    (
        "library/ubuntu",
        "docker.io",
        "library/ubuntu",
        None,
        None,
        "docker.io/library/ubuntu",
        "ubuntu",
    ),
    (
        "other/library",
        "docker.io",
        "other/library",
        None,
        None,
        "docker.io/other/library",
        "other/library",
    ),
    (
        "docker.io/debian",
        "docker.io",
        "library/debian",
        None,
        None,
        "docker.io/library/debian",
        "debian",
    ),
    (
        "docker.io/docker/docker",
        "docker.io",
        "docker/docker",
        None,
        None,
        "docker.io/docker/docker",
        "docker/docker",
    ),
    (
        "index.docker.io/docker/docker",
        "docker.io",
        "docker/docker",
        None,
        None,
        "docker.io/docker/docker",
        "docker/docker",
    ),
    (
        "index.docker.io/library/ubuntu-12.04-base",
        "docker.io",
        "library/ubuntu-12.04-base",
        None,
        None,
        "docker.io/library/ubuntu-12.04-base",
        "ubuntu-12.04-base",
    ),
    (
        "index.docker.io/ubuntu-12.04-base",
        "docker.io",
        "library/ubuntu-12.04-base",
        None,
        None,
        "docker.io/library/ubuntu-12.04-base",
        "ubuntu-12.04-base",
    ),
    (
        "docker.io/library/a/b",
        "docker.io",
        "library/a/b",
        None,
        None,
        "docker.io/library/a/b",
        "library/a/b",
    ),
    (
        "docker.io",
        "docker.io",
        "library/docker.io",
        None,
        None,
        "docker.io/library/docker.io",
        "docker.io",
    ),
    (
        "127.0.0.1:8000/private/moonbase",
        "127.0.0.1:8000",
        "private/moonbase",
        None,
        None,
        "127.0.0.1:8000/private/moonbase",
        "127.0.0.1:8000/private/moonbase",
    ),
    (
        "example.com:8000/privatebase",
        "example.com:8000",
        "privatebase",
        None,
        None,
        "example.com:8000/privatebase",
        "example.com:8000/privatebase",
    ),
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnevere",
        "docker.io",
        "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnevere",
        None,
        None,
        "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnevere",
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnevere",
    ),
    # a 63-character hex string is a name; only exactly 64 is refused
    (
        HEX64[:63],
        "docker.io",
        "library/" + HEX64[:63],
        None,
        None,
        "docker.io/library/" + HEX64[:63],
        HEX64[:63],
    ),
    # a 64-hex name with a tag is not an image id, so docker accepts it; the familiar form keeps
    # ``library/`` so that it still parses back
    (
        HEX64 + ":v1",
        "docker.io",
        "library/" + HEX64,
        "v1",
        None,
        f"docker.io/library/{HEX64}:v1",
        f"library/{HEX64}:v1",
    ),
    # an upper-case first component is a domain (splitDockerDomain)
    ("Docker/docker", "Docker", "docker", None, None, "Docker/docker", "Docker/docker"),
    ("DOCKER/docker", "DOCKER", "docker", None, None, "DOCKER/docker", "DOCKER/docker"),
    # separators
    (
        "a__b-c---d.e_f",
        "docker.io",
        "library/a__b-c---d.e_f",
        None,
        None,
        "docker.io/library/a__b-c---d.e_f",
        "a__b-c---d.e_f",
    ),
    # a path on docker.io whose first component looks like a domain keeps ``docker.io/``
    (
        "docker.io/foo.com/bar",
        "docker.io",
        "foo.com/bar",
        None,
        None,
        "docker.io/foo.com/bar",
        "docker.io/foo.com/bar",
    ),
    (
        "docker.io/localhost/bar:1",
        "docker.io",
        "localhost/bar",
        "1",
        None,
        "docker.io/localhost/bar:1",
        "docker.io/localhost/bar:1",
    ),
    (
        "a:" + "t" * MAX_TAG_LENGTH,
        "docker.io",
        "library/a",
        "t" * 128,
        None,
        "docker.io/library/a:" + "t" * 128,
        "a:" + "t" * 128,
    ),
    (
        "a:_x.Y-z",
        "docker.io",
        "library/a",
        "_x.Y-z",
        None,
        "docker.io/library/a:_x.Y-z",
        "a:_x.Y-z",
    ),
]


@pytest.mark.parametrize("case", VALID, ids=[case[0][:60] for case in VALID])
def test_parse_valid(case: tuple[str, str, str, str | None, str | None, str, str]) -> None:
    text, domain, path, tag, digest, full, familiar = case
    ref = Reference.parse(text)
    assert ref.domain == domain
    assert ref.path == path
    assert ref.repository == path
    assert ref.tag == tag
    assert ref.digest == (Digest.parse(digest) if digest is not None else None)
    assert ref.name == f"{domain}/{path}"
    assert str(ref) == full
    assert ref.familiar() == familiar
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar()) == ref
    assert Reference.parse(ref.familiar_name) == Reference(ref.domain, ref.path)


# -- invalid references ------------------------------------------------------------------------

# (input, fragment of the message)
INVALID: list[tuple[str, str]] = [
    ("", "must not be empty"),
    (HEX64, "cannot specify 64-byte hexadecimal strings"),
    ("Uppercase:tag", "must be lowercase"),
    ("Foo", "must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "must be lowercase"),
    ("docker.io/docker/Docker", "must be lowercase"),
    ("localhost:5000/Foo", "must be lowercase"),
    ("a" * 256, "must not be more than 255 characters"),
    ("a/" * 128 + "a:tag", "must not be more than 255 characters"),
    ("a" * 248, "must not be more than 255 characters"),  # library/ + 248 = 256
    ("-foo", "must start and end with a lower-case letter or digit"),
    ("foo-", "must start and end with a lower-case letter or digit"),
    ("foo/-bar", "must start and end with a lower-case letter or digit"),
    ("foo/bar_", "must start and end with a lower-case letter or digit"),
    ("foo..bar", "invalid separator"),
    ("foo___bar", "invalid separator"),
    ("foo._bar", "invalid separator"),
    ("docker.io/library/..", "must start and end"),
    ("docker.io/library/.", "must start and end"),
    ("docker///docker", "empty component"),
    ("docker.io/docker///docker", "empty component"),
    ("/foo", "empty component"),
    ("foo/", "empty component"),
    ("docker.io/library/", "empty component"),
    ("aa/asdf$$^/aa", "invalid characters"),
    ("foo bar", "invalid characters"),
    ("foo\n", "invalid characters"),
    ("fo\u00e9", "invalid characters"),
    (":justtag", "missing repository name"),
    (f"@{SHA_F}", "missing repository name"),
    ("localhost:5000/", "missing repository name"),
    ("redis:", "tag is empty"),
    ("redis:" + "a" * (MAX_TAG_LENGTH + 1), "tag is longer than 128 characters"),
    ("redis:.bad", "invalid tag"),
    ("redis:-bad", "invalid tag"),
    ("redis:a:b", "invalid tag"),
    ("redis:t\u00e9", "invalid tag"),
    ("docker.io/redis:a/b", "invalid tag"),
    ("redis:a/b", "invalid registry domain 'redis:a'"),  # a ':' makes 'redis:a' the domain
    ("repo@sha256:" + "f" * 63, "invalid digest"),
    ("repo@sha256:" + "F" * 64, "invalid digest"),
    ("repo@sha256", "invalid digest"),
    ("repo@", "invalid digest"),
    ("validname@invaliddigest:" + "f" * 64, "unsupported algorithm"),
    (f"repo@{SHA_F}@{SHA_F}", "more than one '@'"),
    (f"repo@{SHA_F}:tag", "invalid digest"),
    ("[2001:db8::1]", "invalid characters"),
    ("[2001:db8::1]:5000", "invalid characters"),
    ("[2001:db8::1]:tag", "invalid characters"),
    ("[fe80::1%eth0]:5000/repo", "invalid registry domain"),
    ("[fe80::1%@invalidzone]:5000/repo", "invalid"),
    ("a_b.com/repo", "invalid registry domain"),
    ("-host.com/repo", "invalid registry domain"),
    ("host.com:/repo", "invalid registry domain"),
    ("host.com:port/repo", "invalid registry domain"),
    ("Host_X/repo", "invalid registry domain"),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID, ids=[case[0][:60] for case in INVALID])
def test_parse_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    message = str(info.value)
    assert fragment in message
    assert message.startswith(f"invalid reference {text!r}: ")
    assert isinstance(info.value, MinidockError)
    assert isinstance(info.value, ValueError)


def test_bad_digest_is_chained() -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse("repo@sha256:xyz")
    assert isinstance(info.value.__cause__, InvalidDigest)


def test_path_length_excludes_domain() -> None:
    path = "a" * MAX_PATH_LENGTH
    ref = Reference.parse(f"registry.example.com:5000/{path}")
    assert ref.path == path
    assert len(ref.name) > MAX_PATH_LENGTH
    with pytest.raises(InvalidReference, match="255 characters"):
        Reference.parse(f"registry.example.com:5000/{path}a")


# -- properties and derived values --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("redis", "registry-1.docker.io"),
        ("index.docker.io/user/app", "registry-1.docker.io"),
        ("localhost:5000/x", "localhost:5000"),
        ("[::1]:5000/x", "[::1]:5000"),
        ("ghcr.io/org/app", "ghcr.io"),
    ],
)
def test_registry_host(text: str, host: str) -> None:
    assert Reference.parse(text).registry_host == host


@pytest.mark.parametrize(
    ("text", "familiar_name"),
    [
        ("docker.io/library/redis:7", "redis"),
        ("docker.io/user/app", "user/app"),
        ("docker.io/library/nested/app", "library/nested/app"),
        ("ghcr.io/org/app", "ghcr.io/org/app"),
        ("docker.io/my.org/app", "docker.io/my.org/app"),
        (f"docker.io/library/{HEX64}:x", f"library/{HEX64}"),
    ],
)
def test_familiar_name(text: str, familiar_name: str) -> None:
    assert Reference.parse(text).familiar_name == familiar_name


def test_with_default_tag() -> None:
    ref = Reference.parse("redis")
    assert ref.tag is None
    tagged = ref.with_default_tag()
    assert tagged.tag == "latest"
    assert str(tagged) == "docker.io/library/redis:latest"
    assert tagged.familiar() == "redis:latest"
    assert ref.tag is None  # unchanged
    assert tagged.with_default_tag() is tagged
    pinned = Reference.parse(f"redis@{SHA_F}")
    assert pinned.with_default_tag() is pinned
    assert Reference.parse("redis:7").with_default_tag().tag == "7"


def test_with_tag_and_digest_keep_the_other() -> None:
    digest = Digest.parse(SHA_A)
    ref = Reference.parse("user/app:1").with_digest(digest)
    assert ref.tag == "1"
    assert ref.digest == digest
    assert str(ref) == f"docker.io/user/app:1@{SHA_A}"
    retagged = ref.with_tag("2")
    assert retagged.tag == "2"
    assert retagged.digest == digest
    assert retagged.familiar() == f"user/app:2@{SHA_A}"


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a:b", "a/b", "x" * 129, "\u00e9"])
def test_with_tag_validates(tag: str) -> None:
    with pytest.raises(InvalidReference):
        Reference.parse("redis").with_tag(tag)


def test_value_semantics() -> None:
    a = Reference.parse("redis:7")
    b = Reference.parse("docker.io/library/redis:7")
    assert a == b
    assert hash(a) == hash(b)
    assert {a, b} == {a}
    with pytest.raises(AttributeError):
        a.tag = "8"  # type: ignore[misc]


def test_constructor_accepts_normal_form() -> None:
    ref = Reference("docker.io", "library/redis", "7", None)
    assert ref == Reference.parse("redis:7")
    assert Reference("localhost:5000", "x") == Reference.parse("localhost:5000/x")


@pytest.mark.parametrize(
    ("domain", "path", "fragment"),
    [
        ("docker.io", "redis", "not in normal form"),
        ("index.docker.io", "library/redis", "not in normal form"),
        ("registry", "x", "would be read as part of the repository path"),
        ("bad_domain.com", "x", "invalid registry domain"),
        ("docker.io", "library/Redis", "must be lowercase"),
        ("docker.io", "", "empty component"),
        ("ghcr.io", "a" * 256, "255 characters"),
    ],
)
def test_constructor_rejects_non_normal_forms(domain: str, path: str, fragment: str) -> None:
    with pytest.raises(InvalidReference, match=fragment):
        Reference(domain, path)


# -- image id prefixes --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a", "abc123", "0" * 12, HEX64, "sha256:abc", f"sha256:{HEX64}"])
def test_is_image_id_prefix_true(text: str) -> None:
    assert is_image_id_prefix(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:",
        "ABC123",
        "abc12g",
        HEX64 + "0",
        "redis",
        "sha512:abc",
        "abc:1",
        "abc\n",
        "sha256",
    ],
)
def test_is_image_id_prefix_false(text: str) -> None:
    assert not is_image_id_prefix(text)


# -- property tests ----------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_HEX = "0123456789abcdef"


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.text(_ALNUM, min_size=1, max_size=6), min_size=1, max_size=4))
    seps = draw(
        st.lists(
            st.sampled_from([".", "_", "__", "-", "--", "---"]),
            min_size=len(parts) - 1,
            max_size=len(parts) - 1,
        )
    )
    out = parts[0]
    for sep, part in zip(seps, parts[1:], strict=True):
        out += sep + part
    return out


_DOMAIN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _domain_component(head: str, middle: str, tail: str) -> str:
    """``[a-zA-Z0-9]`` or ``[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]``."""
    return head + middle + tail if tail else head


_domain_components = st.builds(
    _domain_component,
    st.sampled_from(_DOMAIN_CHARS),
    st.text(_DOMAIN_CHARS + "-", max_size=5),
    st.text(_DOMAIN_CHARS, max_size=1),
)
_ports = st.integers(min_value=0, max_value=99999).map(lambda p: f":{p}")
_optional_ports = st.just("") | _ports


@st.composite
def domains(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["docker", "dotted", "port", "localhost", "ipv6", "upper"]))
    if kind == "docker":
        return DEFAULT_DOMAIN
    if kind == "localhost":
        return "localhost" + draw(_optional_ports)
    if kind == "ipv6":
        body = draw(st.text(_HEX + "ABCDEF:", min_size=1, max_size=12))
        if ":" not in body:
            body += ":"  # without a ':' docker would read "[ab]" as a path component
        return f"[{body}]" + draw(_optional_ports)
    if kind == "upper":
        # an upper-case letter alone makes the first component a domain
        return draw(st.sampled_from("ABCXYZ")) + draw(_domain_components) + draw(_optional_ports)
    head = draw(_domain_components)
    if kind == "port":
        return head + draw(_ports)
    rest = draw(st.lists(_domain_components, min_size=1, max_size=3))
    domain = ".".join([head, *rest]) + draw(_optional_ports)
    if domain == "index.docker.io":
        return DEFAULT_DOMAIN
    return domain


_TAG_FIRST = "ABCZabcz019_"
_TAG_REST = _TAG_FIRST + ".-"
_short_tags = st.builds(str.__add__, st.sampled_from(_TAG_FIRST), st.text(_TAG_REST, max_size=12))


def _long_tag(first: str, chunk: str, size: int) -> str:
    return (first + chunk * MAX_TAG_LENGTH)[:size]


_long_tags = st.builds(
    _long_tag,
    st.sampled_from(_TAG_FIRST),
    st.text(_TAG_REST, min_size=1, max_size=4),
    st.integers(min_value=100, max_value=MAX_TAG_LENGTH),
)
_tags = _short_tags | _long_tags
_digests = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: Digest("sha256", b.hex())),
    st.binary(min_size=64, max_size=64).map(lambda b: Digest("sha512", b.hex())),
)


@st.composite
def references(draw: st.DrawFn) -> Reference:
    domain = draw(domains())
    components = draw(st.lists(path_components(), min_size=1, max_size=4))
    if domain == DEFAULT_DOMAIN and len(components) == 1:
        components.insert(0, draw(st.sampled_from(["library", "user"])))
    path = "/".join(components)
    tag = draw(st.none() | _tags)
    digest = draw(st.none() | _digests)
    return Reference(domain, path, tag, digest)


@settings(max_examples=100, deadline=None)
@given(references())
def test_round_trips(ref: Reference) -> None:
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar()) == ref
    assert Reference.parse(ref.familiar_name) == Reference(ref.domain, ref.path)
    assert Reference.parse(ref.name) == Reference(ref.domain, ref.path)
    assert len(ref.familiar()) <= len(str(ref))


@settings(max_examples=50, deadline=None)
@given(references(), _tags, _digests)
def test_derived_values(ref: Reference, tag: str, digest: Digest) -> None:
    assert ref.with_tag(tag).tag == tag
    assert ref.with_tag(tag).digest == ref.digest
    assert ref.with_digest(digest).digest == digest
    assert ref.with_digest(digest).tag == ref.tag
    defaulted = ref.with_default_tag()
    assert defaulted.tag is not None or defaulted.digest is not None
    assert Reference.parse(str(defaulted)) == defaulted


@settings(max_examples=50, deadline=None)
@given(path_components())
def test_single_component_is_official_image(component: str) -> None:
    ref = Reference.parse(component)
    assert ref.domain == DEFAULT_DOMAIN
    assert ref.path == f"library/{component}"
    assert ref.familiar_name in (component, f"library/{component}")


def _check_parse_total(text: str) -> None:
    """``parse`` raises only ``InvalidReference``; what it accepts round-trips."""
    try:
        ref = Reference.parse(text)
    except InvalidReference as exc:
        message = str(exc)
    else:
        assert Reference.parse(str(ref)) == ref
        assert Reference.parse(ref.familiar()) == ref
        return
    assert message.startswith("invalid reference ")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parse_arbitrary_text(text: str) -> None:
    _check_parse_total(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="aAz09:/@._-[]", max_size=30))
def test_parse_reference_like_text(text: str) -> None:
    _check_parse_total(text)
