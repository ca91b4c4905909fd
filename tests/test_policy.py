"""The target policy (trustelem_relay._policy): names, addresses, decide()."""

from __future__ import annotations

import ast
import pathlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trustelem_relay._errors import (
    ConfigError,
    RefusedByPolicy,
    StreamErrorCode,
    UndeclaredTarget,
)
from trustelem_relay._events import RequestHead
from trustelem_relay._policy import (
    TARGET_NAME_RE,
    Refusal,
    Target,
    TLSSettings,
    decide,
    parse_addr,
    parse_host,
    parse_target_name,
)

UNDECLARED = StreamErrorCode.UNDECLARED_TARGET
REFUSED = StreamErrorCode.REFUSED_BY_POLICY

names = st.from_regex(TARGET_NAME_RE, fullmatch=True)


def head(
    path: str = "/scim/v2/Users",
    *,
    method: str = "GET",
    scheme: str = "https",
    authority: str = "scim.corp",
) -> RequestHead:
    return RequestHead(method=method, scheme=scheme, authority=authority, path=path)


def declared(*targets: Target) -> dict[str, Target]:
    return {target.name: target for target in targets}


SCIM = Target(name="scim-server", host="10.0.0.12", port=443)
PREFIXED = Target(name="scim", host="10.0.0.13", port=443, path_prefix="/scim")


def code_of(result: Target | Refusal) -> StreamErrorCode | None:
    return result.code if isinstance(result, Refusal) else None


# --------------------------------------------------------------------------
# Target names


@pytest.mark.parametrize(
    "name", ["a", "0", "scim-server", "app1", "a-b-c", "x" * 63, "9-lives"]
)
def test_valid_target_names_are_accepted(name: str) -> None:
    assert parse_target_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-scim",
        "scim-",
        "Scim",
        "scim_server",
        "scim.server",
        "scim server",
        "scim\n",
        "x" * 64,
        "s\u0441im",  # Cyrillic es
        "\uff53cim",  # fullwidth s
    ],
)
def test_invalid_target_names_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid target name") as caught:
        parse_target_name(name)
    assert "\n" not in str(caught.value)


def test_target_name_must_be_a_string() -> None:
    with pytest.raises(ConfigError):
        parse_target_name(42)  # type: ignore[arg-type]


@given(st.text(max_size=70))
def test_target_name_rule_is_the_documented_regex(name: str) -> None:
    valid = TARGET_NAME_RE.fullmatch(name) is not None
    try:
        parse_target_name(name)
    except ConfigError:
        assert not valid
    else:
        assert valid


# --------------------------------------------------------------------------
# Addresses and hosts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.12:443", ("10.0.0.12", 443)),
        ("[::1]:443", ("::1", 443)),
        ("[fd00::12]:8443", ("fd00::12", 8443)),
        ("scim.corp:1", ("scim.corp", 1)),
        ("scim.corp.:65535", ("scim.corp.", 65535)),
        ("internal_host:80", ("internal_host", 80)),
        ("localhost:8080", ("localhost", 8080)),
    ],
)
def test_parse_addr_accepts_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.12", "missing port"),
        ("scim.corp", "missing port"),
        ("[::1]", "missing port"),
        ("10.0.0.12:0", "port must be 1-65535, got 0"),
        ("10.0.0.12:65536", "port must be 1-65535, got 65536"),
        ("10.0.0.12:", "port must be a number"),
        ("10.0.0.12:+1", "port must be a number"),
        ("10.0.0.12:123456", "port must be a number"),
        ("10.0.0.12:\u0664\u0664\u0663", "non-ASCII"),
        (":443", "host is empty"),
        ("", "address is empty"),
        ("::1:443", "in brackets"),
        ("[::1:443", "missing ']'"),
        ("[10.0.0.1]:443", "only for IPv6"),
        ("[::1]443", "expected ':'"),
        ("[zz::1]:443", "not a valid IPv6"),
        ("[fe80::1%eth0]:443", "zone"),
        ("10.0.0.256:443", "not a valid IPv4"),
        ("010.0.0.1:443", "not a valid IPv4"),
        ("scim..corp:443", "not a valid host name"),
        ("-scim:443", "not a valid host name"),
        ("a" * 64 + ".corp:443", "not a valid host name"),
        ("scim corp:443", "spaces"),
        ("scim\x00:443", "control"),
        ("https://scim.corp:443", "without scheme"),
        ("user@scim.corp:443", "without scheme"),
        ("scim.corp:443/x", "without scheme"),
    ],
)
def test_parse_addr_refuses_bad_addresses(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_addr(text)
    assert "\n" not in str(caught.value)


def test_parse_addr_requires_a_string() -> None:
    with pytest.raises(ConfigError, match="expected a string"):
        parse_addr(443)  # type: ignore[arg-type]


def test_long_dns_names_are_refused() -> None:
    name = ".".join(["a" * 60] * 5)
    with pytest.raises(ConfigError, match="not a valid host name"):
        parse_addr(f"{name}:443")


@given(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True)
)
def test_parse_addr_round_trips_through_target_addr(host: str) -> None:
    assume(not host.endswith("-") and "-." not in host)
    target = Target(name="t", host=host, port=443)
    assert parse_addr(target.addr) == (host, 443)


def test_target_addr_brackets_ipv6() -> None:
    assert Target(name="t", host="fd00::1", port=443).addr == "[fd00::1]:443"
    assert Target(name="t", host="10.0.0.1", port=80).addr == "10.0.0.1:80"


@pytest.mark.parametrize("text", ["scim.corp", "10.0.0.1", "fd00::1"])
def test_parse_host_accepts_names_and_ips(text: str) -> None:
    assert parse_host(text) == text


@pytest.mark.parametrize("text", ["", "scim corp", "scim.corp:443", "[::1]", "a..b"])
def test_parse_host_refuses_anything_else(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_host(text)


# --------------------------------------------------------------------------
# Targets keep their invariants


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Bad"}, "invalid target name"),
        ({"host": "a b"}, "not a valid host"),
        ({"port": 0}, "port"),
        ({"methods": frozenset({"get"})}, "upper case"),
        ({"path_prefix": "scim"}, "must start with '/'"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 1025}, "max_concurrent"),
        ({"timeout": 0.0}, "timeout"),
        ({"timeout": 3601.0}, "timeout"),
    ],
)
def test_target_refuses_broken_invariants(
    changes: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"name": "t", "host": "10.0.0.1", "port": 443}
    fields.update(changes)
    with pytest.raises(ConfigError, match=message):
        Target(**fields)  # type: ignore[arg-type]


def test_tls_settings_default_to_verification() -> None:
    assert TLSSettings() == TLSSettings(verify=True)
    assert SCIM.tls.verify is True


def test_tls_pin_must_be_32_bytes() -> None:
    assert TLSSettings(pin_sha256=bytes(32)).pin_sha256 == bytes(32)
    with pytest.raises(ConfigError, match="32 bytes"):
        TLSSettings(pin_sha256=bytes(31))


# --------------------------------------------------------------------------
# decide(): the name


def test_declared_target_is_returned() -> None:
    assert decide(declared(SCIM), "scim-server", head()) is SCIM


def test_agent_refuses_undeclared_target() -> None:
    result = decide(declared(SCIM), "payroll", head())
    assert isinstance(result, Refusal)
    assert result.code is UNDECLARED
    assert "payroll" in result.message


def test_no_targets_refuses_everything() -> None:
    assert code_of(decide({}, "scim-server", head())) is UNDECLARED


def test_a_mapping_that_folds_keys_cannot_smuggle_a_name() -> None:
    # The key says "SCIM-SERVER" but the target is called scim-server: the
    # name asked for must be the target's own name.
    assert code_of(decide({"SCIM-SERVER": SCIM}, "SCIM-SERVER", head())) is UNDECLARED


def test_a_non_string_name_is_undeclared() -> None:
    result = decide(declared(SCIM), b"scim-server", head())  # type: ignore[arg-type]
    assert code_of(result) is UNDECLARED


class _SneakyStr(str):
    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        return True


def test_a_str_subclass_name_is_undeclared() -> None:
    assert code_of(decide(declared(SCIM), _SneakyStr("x"), head())) is UNDECLARED


LOOKALIKES = {
    "\u0441": "c",  # Cyrillic es
    "\u0435": "e",  # Cyrillic ie
    "\u043e": "o",  # Cyrillic o
    "\u0455": "s",  # Cyrillic dze
    "\u0456": "i",  # Cyrillic i
    "\u0131": "i",  # dotless i
    "\uff53": "s",  # fullwidth s
    "\uff45": "e",  # fullwidth e
    "\uff0d": "-",  # fullwidth hyphen
    "\u2010": "-",  # Unicode hyphen
}
AFFIXES = [
    ".",
    "/",
    "\x00",
    " ",
    "\t",
    "\n",
    ":443",
    "\u200b",  # zero-width space
    "\u0301",  # combining acute accent
    "\ufeff",
    "-",
    "0",
    "a",
    "%00",
    "..",
]


@st.composite
def near_misses(draw: st.DrawFn, name: str) -> str:
    """A string that looks like *name* but is not exactly it."""
    kind = draw(st.sampled_from(["case", "append", "prepend", "insert", "lookalike"]))
    if kind == "case":
        index = draw(st.integers(0, len(name) - 1))
        return name[:index] + name[index].upper() + name[index + 1 :]
    affix = draw(st.sampled_from(AFFIXES) | st.text(min_size=1, max_size=3))
    if kind == "append":
        return name + affix
    if kind == "prepend":
        return affix + name
    if kind == "insert":
        index = draw(st.integers(0, len(name)))
        return name[:index] + affix + name[index:]
    candidates = [i for i, char in enumerate(name) if char in LOOKALIKES.values()]
    if not candidates:
        return name + "\u0301"
    index = draw(st.sampled_from(candidates))
    fakes = [fake for fake, real in LOOKALIKES.items() if real == name[index]]
    return name[:index] + draw(st.sampled_from(fakes)) + name[index + 1 :]


@given(st.data(), st.lists(names, min_size=1, max_size=5, unique=True))
def test_near_miss_names_are_undeclared(data: st.DataObject, names_: list[str]) -> None:
    targets = {n: Target(name=n, host="10.0.0.1", port=443) for n in names_}
    name = data.draw(st.sampled_from(names_))
    variant = data.draw(near_misses(name))
    assume(variant not in targets)
    assert code_of(decide(targets, variant, head())) is UNDECLARED


@given(st.lists(names, max_size=5, unique=True), st.text(max_size=70))
def test_only_declared_names_pass(names_: list[str], asked: str) -> None:
    targets = {n: Target(name=n, host="10.0.0.1", port=443) for n in names_}
    result = decide(targets, asked, head())
    if asked in targets:
        assert result is targets[asked]
    else:
        assert code_of(result) is UNDECLARED


@given(names)
def test_every_declared_name_passes(name: str) -> None:
    target = Target(name=name, host="10.0.0.1", port=443)
    assert decide({name: target}, name, head()) is target
    assert code_of(decide({name: target}, name + ".", head())) is UNDECLARED
    assert code_of(decide({name: target}, name.upper() + "X", head())) is UNDECLARED


# --------------------------------------------------------------------------
# decide(): scheme, method, authority, path


@pytest.mark.parametrize("scheme", ["ftp", "HTTPS", "ws", "", "https "])
def test_only_http_and_https_schemes_pass(scheme: str) -> None:
    assert (
        code_of(decide(declared(SCIM), "scim-server", head(scheme=scheme))) is REFUSED
    )


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_http_and_https_pass(scheme: str) -> None:
    assert decide(declared(SCIM), "scim-server", head(scheme=scheme)) is SCIM


@pytest.mark.parametrize(
    "method", ["", "GET /", "GE T", "GET\r\n", "X" * 33, "G\u00c9T"]
)
def test_malformed_methods_are_refused(method: str) -> None:
    assert (
        code_of(decide(declared(SCIM), "scim-server", head(method=method))) is REFUSED
    )


def test_method_allow_list_is_exact() -> None:
    target = Target(
        name="ro", host="10.0.0.1", port=443, methods=frozenset({"GET", "HEAD"})
    )
    targets = declared(target)
    assert decide(targets, "ro", head(method="GET")) is target
    assert decide(targets, "ro", head(method="HEAD")) is target
    for method in ("POST", "DELETE", "get", "Get"):
        result = decide(targets, "ro", head(method=method))
        assert code_of(result) is REFUSED
    refusal = decide(targets, "ro", head(method="PATCH"))
    assert isinstance(refusal, Refusal)
    assert "GET, HEAD" in refusal.message


def test_any_token_method_passes_without_a_list() -> None:
    for method in ("GET", "PATCH", "PROPFIND", "M-SEARCH"):
        assert decide(declared(SCIM), "scim-server", head(method=method)) is SCIM


@pytest.mark.parametrize(
    "authority",
    [
        "scim.corp",
        "scim.corp:8443",
        "10.0.0.12",
        "10.0.0.12:443",
        "[::1]",
        "[fd00::12]:443",
    ],
)
def test_plain_authorities_pass(authority: str) -> None:
    result = decide(declared(SCIM), "scim-server", head(authority=authority))
    assert result is SCIM


@pytest.mark.parametrize(
    "authority",
    [
        "",
        "user@scim.corp",
        "user:pw@scim.corp",
        "scim.corp extra",
        "scim.corp\r\nX-Injected: 1",
        "scim.corp\x00",
        "scim.corp/path",
        "scim.corp?q",
        "scim.corp#f",
        "scim\\corp",
        "scim.corp:",
        "scim.corp:0",
        "scim.corp:99999",
        "[::1",
        "::1",
        "b\u00fccher.example",
        "a" * 300,
        "scim..corp",
    ],
)
def test_odd_authorities_are_refused(authority: str) -> None:
    result = decide(declared(SCIM), "scim-server", head(authority=authority))
    assert code_of(result) is REFUSED


@pytest.mark.parametrize(
    "path",
    ["scim", "", "*", "http://evil/", "/a b", "/a\x00", "/a\x7f", "/\u00e9", "/a#f"],
)
def test_paths_must_be_origin_form_visible_ascii(path: str) -> None:
    assert code_of(decide(declared(SCIM), "scim-server", head(path))) is REFUSED


def test_without_a_prefix_any_origin_path_passes() -> None:
    for path in ("/", "/anything", "/a/../b", "/x?y=%2e%2e"):
        assert decide(declared(SCIM), "scim-server", head(path)) is SCIM


@pytest.mark.parametrize(
    "path",
    [
        "/scim",
        "/scim/",
        "/scim/v2/Users",
        "/scim?x=1",
        "/scim/v2/Users?filter=userName%20eq%20%22a..b%22",
        "/scim/v2/Users/2819c223-7f76-453a-919d-413861904646",
        "/scim/a..b",
        "/scim/...",
        "/scim/%41",
    ],
)
def test_paths_inside_the_prefix_pass(path: str) -> None:
    assert decide(declared(PREFIXED), "scim", head(path)) is PREFIXED


@pytest.mark.parametrize(
    "path",
    [
        "/scimx",
        "/scim-admin/x",
        "/",
        "/admin",
        "/SCIM/v2",
        "//scim",
        "/scim/../admin",
        "/scim/./x",
        "/scim/..",
        "/scim/%2e%2e/admin",
        "/scim/%2E%2E/admin",
        "/scim/.%2e/admin",
        "/scim/%2e./admin",
        "/scim/%252e%252e/admin",
        "/scim/%25252e%25252e/admin",
        "/scim/%2525252e/admin",
        "/scim/..;/admin",
        "/scim/..;jsessionid=1/admin",
        "/scim/%2e%2e%2fadmin",
        "/scim/a%2fb",
        "/scim/a%5cb",
        "/scim/a%255cb",
        "/scim/..%2f..%2fadmin",
    ],
)
def test_paths_outside_the_prefix_or_climbing_are_refused(path: str) -> None:
    assert code_of(decide(declared(PREFIXED), "scim", head(path))) is REFUSED


def test_prefix_with_trailing_slash_is_segment_aware() -> None:
    target = Target(name="s", host="10.0.0.1", port=443, path_prefix="/scim/v2/")
    targets = declared(target)
    for path in ("/scim/v2", "/scim/v2/", "/scim/v2/Users"):
        assert decide(targets, "s", head(path)) is target
    for path in ("/scim/v2x", "/scim/v3", "/scim"):
        assert code_of(decide(targets, "s", head(path))) is REFUSED


def test_root_prefix_allows_every_path() -> None:
    target = Target(name="s", host="10.0.0.1", port=443, path_prefix="/")
    assert decide(declared(target), "s", head("/anything/at/all")) is target


segments = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_~", min_size=1)


@given(st.lists(segments, max_size=5), st.booleans())
def test_paths_built_under_the_prefix_pass(parts: list[str], slash: bool) -> None:
    path = "/scim" + "".join("/" + part for part in parts) + ("/" if slash else "")
    assert decide(declared(PREFIXED), "scim", head(path)) is PREFIXED


@given(segments, st.lists(segments, max_size=3))
def test_paths_that_only_share_characters_are_refused(
    suffix: str, parts: list[str]
) -> None:
    path = "/scim" + suffix + "".join("/" + part for part in parts)
    assert code_of(decide(declared(PREFIXED), "scim", head(path))) is REFUSED


@given(
    st.lists(segments, max_size=3),
    st.sampled_from(["..", ".", "%2e%2e", "%2E.", ".%2e", "%252e%252e", "..;x"]),
    st.lists(segments, max_size=3),
)
def test_dot_segments_are_refused_wherever_they_are(
    before: list[str], dots: str, after: list[str]
) -> None:
    path = "/" + "/".join(["scim", *before, dots, *after])
    assert code_of(decide(declared(PREFIXED), "scim", head(path))) is REFUSED


@given(
    st.text(max_size=20),
    st.text(max_size=10),
    st.text(max_size=30),
    st.text(max_size=40),
)
def test_decide_never_raises(name: str, method: str, authority: str, path: str) -> None:
    targets = declared(SCIM, PREFIXED)
    for target_name in (name, "scim", "scim-server"):
        for scheme in ("https", method):
            request = RequestHead(
                method=method, scheme=scheme, authority=authority, path=path
            )
            assert isinstance(decide(targets, target_name, request), Target | Refusal)


# --------------------------------------------------------------------------
# Refusals become typed errors


def test_refusal_error_for_undeclared_target() -> None:
    refusal = decide(declared(SCIM), "nope", head())
    assert isinstance(refusal, Refusal)
    error = refusal.error("r-42")
    assert isinstance(error, UndeclaredTarget)
    assert error.may_have_reached_target is False
    assert error.request_id == "r-42"
    assert "(request r-42)" in str(error)


def test_refusal_error_for_policy() -> None:
    refusal = decide(declared(PREFIXED), "scim", head("/admin"))
    assert isinstance(refusal, Refusal)
    error = refusal.error()
    assert isinstance(error, RefusedByPolicy)
    assert error.may_have_reached_target is False
    assert error.request_id is None


def test_refusal_messages_are_one_short_line() -> None:
    refusal = decide(declared(SCIM), "x\n" * 100, head())
    assert isinstance(refusal, Refusal)
    assert "\n" not in refusal.message
    assert len(refusal.message) < 200


def test_policy_module_does_no_io() -> None:
    source = pathlib.Path(__file__).parents[1] / "trustelem_relay" / "_policy.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "h11", "socket", "ssl", "os", "subprocess"}
