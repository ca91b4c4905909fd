"""The agent's configuration (trustelem_relay._config): loading, secrets,
the state directory and editing connect.toml."""

from __future__ import annotations

import base64
import logging
import os
import pathlib
import stat
from collections.abc import Iterator

import pytest

from trustelem_relay._config import (
    CONFIG_ENV,
    AgentConfig,
    ensure_state_dir,
    list_targets,
    parse_pin,
    read_secret_file,
    redact_url,
    remove_target,
    set_target,
    write_secret_file,
)
from trustelem_relay._errors import ConfigError
from trustelem_relay._policy import Target

SECRET = "2jy34wpcohrhdytr6hutym6qfi2l7nnw"
PROXY_PASSWORD = "s3cr3t-proxy-pw"
PIN = base64.b64encode(bytes(range(32))).decode()

# An operator's file, with comments everywhere an operator puts them.
CONFIG = f"""\
# Agent for the Paris office.
service_id = "{SECRET}"   # from `hub create-service paris`
state_dir = "run/"
hub = "wss://hub.example.com/v1/connect"
# proxy = "https://user:pw@proxy:3128"

# The HR application's SCIM server.
[target.scim-server]
addr = "10.0.0.12:443"     # the load balancer
server_name = "scim.corp"  # its certificate's name
methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# Payroll, reached by IPv6.
[target.payroll]
addr = "[fd00::12]:8443"
path_prefix = "/scim/v2"
timeout = 30
max_concurrent = 8
"""


def write(directory: pathlib.Path, text: str, mode: int = 0o600) -> pathlib.Path:
    path = directory / "connect.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def config(tmp_path: pathlib.Path) -> pathlib.Path:
    return write(tmp_path, CONFIG)


@pytest.fixture
def chdir(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    old = pathlib.Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def only_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert "\r" not in message
    return message


def minimal(extra: str = "", target: str = "") -> str:
    """A valid file with *extra* top-level lines and *target* tables."""
    hub = "wss://hub.example.com/v1/connect"
    return f'service_id = "{SECRET}"\nhub = "{hub}"\n{extra}\n{target}'


def as_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------
# Loading


def test_load_reads_every_key(config: pathlib.Path, tmp_path: pathlib.Path) -> None:
    loaded = AgentConfig.load(config)
    assert loaded.path == config
    assert loaded.service_id == SECRET
    assert loaded.state_dir == tmp_path / "run"
    assert loaded.state_dir.is_absolute()
    assert loaded.hub == "wss://hub.example.com/v1/connect"
    assert loaded.proxy is None
    assert list(loaded.targets) == ["scim-server", "payroll"]
    scim = loaded.targets["scim-server"]
    assert (scim.host, scim.port, scim.addr) == ("10.0.0.12", 443, "10.0.0.12:443")
    assert scim.tls.verify is True
    assert scim.tls.server_name == "scim.corp"
    assert scim.methods == frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
    assert (scim.max_concurrent, scim.timeout) == (64, 55.0)
    payroll = loaded.targets["payroll"]
    assert (payroll.host, payroll.port) == ("fd00::12", 8443)
    assert payroll.path_prefix == "/scim/v2"
    assert payroll.timeout == 30.0
    assert payroll.max_concurrent == 8


def test_relative_paths_follow_the_config_file(chdir: pathlib.Path) -> None:
    sub = chdir / "etc"
    sub.mkdir()
    (sub / "ca.pem").write_text("x")
    path = write(sub, minimal('state_dir = "state"\nhub_ca_file = "ca.pem"'))
    loaded = AgentConfig.load("etc/connect.toml")
    assert loaded.state_dir == sub / "state"
    assert loaded.hub_ca_file == sub / "ca.pem"
    assert loaded.path == pathlib.Path("etc/connect.toml")
    assert path.exists()


def test_state_dir_defaults_to_run(
    config: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    path = write(tmp_path, minimal())
    assert AgentConfig.load(path).state_dir == tmp_path / "run"


def test_secrets_stay_out_of_repr(tmp_path: pathlib.Path) -> None:
    proxy = f'proxy = "http://agent:{PROXY_PASSWORD}@proxy.corp:3128"'
    loaded = AgentConfig.load(write(tmp_path, minimal(proxy)))
    assert loaded.proxy == f"http://agent:{PROXY_PASSWORD}@proxy.corp:3128"
    for text in (repr(loaded), str(loaded)):
        assert SECRET not in text
        assert PROXY_PASSWORD not in text


def test_loading_logs_nothing_secret(
    config: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        AgentConfig.load(config)
        set_target(config, "new", "10.0.0.9:443")
    assert SECRET not in caplog.text


def test_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert AgentConfig.default_path() == pathlib.Path("connect.toml")
    monkeypatch.setenv(CONFIG_ENV, "/etc/trustelem/connect.toml")
    assert AgentConfig.default_path() == pathlib.Path("/etc/trustelem/connect.toml")
    monkeypatch.setenv(CONFIG_ENV, "")
    assert AgentConfig.default_path() == pathlib.Path("connect.toml")


def test_missing_file_says_how_to_create_it(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as caught:
        AgentConfig.load(tmp_path / "nope.toml")
    assert "no such config file" in only_line(caught)


def test_unreadable_path_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it") as caught:
        AgentConfig.load(tmp_path)
    only_line(caught)


def test_service_id_from_a_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    write_secret_file(tmp_path / "run" / "service_id", SECRET + "\n")
    text = 'service_id_file = "run/service_id"\nhub = "wss://hub.example.com/"\n'
    # The file itself holds no secret, so it may be world-readable.
    loaded = AgentConfig.load(write(tmp_path, text, mode=0o644))
    assert loaded.service_id == SECRET


def test_bad_service_id_in_its_file_is_not_echoed(tmp_path: pathlib.Path) -> None:
    bad = SECRET[:-1] + "1"
    write_secret_file(tmp_path / "sid", bad)
    path = write(tmp_path, 'service_id_file = "sid"\nhub = "wss://h.example/"\n')
    with pytest.raises(ConfigError, match="sid: service_id:") as caught:
        AgentConfig.load(path)
    assert bad not in only_line(caught)


def test_service_id_file_must_be_private(tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "sid"
    write_secret_file(secret, SECRET)
    secret.chmod(0o640)
    path = write(tmp_path, 'service_id_file = "sid"\nhub = "wss://h.example/"\n')
    with pytest.raises(ConfigError) as caught:
        AgentConfig.load(path)
    message = only_line(caught)
    assert f"chmod 600 {secret}" in message
    assert SECRET not in message


def test_inline_service_id_needs_a_private_file(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, CONFIG, mode=0o644)
    with pytest.raises(ConfigError) as caught:
        AgentConfig.load(path)
    message = only_line(caught)
    assert "mode 0644" in message
    assert f"chmod 600 {path}" in message
    assert SECRET not in message


def test_inline_service_id_fix_names_the_file_as_given(chdir: pathlib.Path) -> None:
    write(chdir, CONFIG, mode=0o604)
    with pytest.raises(ConfigError, match=r"^connect\.toml: .*chmod 600 connect\.toml"):
        AgentConfig.load("connect.toml")


@pytest.mark.parametrize(
    "value",
    [
        SECRET[:-1],
        SECRET + "a",
        SECRET.upper(),
        SECRET[:-1] + "1",
        SECRET[:-1] + "=",
        SECRET[:-1] + " ",
        "",
    ],
)
def test_bad_service_id_is_refused_without_echo(
    tmp_path: pathlib.Path, value: str
) -> None:
    text = CONFIG.replace(SECRET, value)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="service_id") as caught:
        AgentConfig.load(path)
    message = only_line(caught)
    if value:
        assert value not in message
        assert value[:20] not in message


HUB = "wss://hub.example.com/v1/connect"


def with_hub(hub: str) -> str:
    return minimal().replace(HUB, hub)


def in_target(lines: str) -> str:
    return minimal(target=f"[target.x]\naddr = 'a:1'\n{lines}")


BAD_FILES = [
    # (file text, what the one-line message must contain)
    (
        "service_id = 1\nhub = 'wss://h/'",
        "service_id: expected a string, got an integer",
    ),
    ("hub = 'wss://h.example/'", "set exactly one of service_id and service_id_file"),
    (
        f"service_id = '{SECRET}'\nservice_id_file = 'x'\nhub = 'wss://h/'",
        "exactly one",
    ),
    (f"service_id = '{SECRET}'", "missing hub"),
    (with_hub("ws://hub.example.com/v1/connect"), "only allowed to a loopback"),
    (with_hub("ws://10.0.0.1/"), "only allowed to a loopback"),
    (with_hub("https://hub.example.com/"), "expected a wss://"),
    (with_hub("wss://u:p@hub.example.com/"), "no user"),
    (with_hub("wss://hub.example.com:0x1/"), "malformed"),
    (with_hub("wss:///"), "expected a wss://"),
    (with_hub("wss://hub.example.com/v1 connect"), "spaces"),
    (f"service_id = '{SECRET}'\nhub = 1", "hub: expected a string"),
    (minimal("proxy = 'ftp://proxy:21'"), "proxy: expected http://"),
    (minimal("proxy = 'http://proxy:3128/path'"), "proxy: expected http://"),
    (minimal("proxy = 'http://proxy:99999'"), "malformed"),
    (minimal("state_dir = 1"), "state_dir: expected a string, got an integer"),
    (minimal("state_dir = ''"), "state_dir: expected a path"),
    (minimal("hub_pin_sha256 = 'not base64!'"), "hub_pin_sha256: expected the base64"),
    (minimal("hub_pin_sha256 = 'AAAA'"), "decodes to 3"),
    (minimal(f"hub_pin_sha256 = 'sha256/{PIN}'"), "without 'sha256/'"),
    (minimal("hubb = 'x'"), "hubb: unknown key; did you mean hub?"),
    (minimal("colour = 'x'"), "colour: unknown key; expected one of service_id"),
    (minimal("'odd key' = 1"), '"odd key": unknown key'),
    (minimal("target = 'x'"), "target: expected a table, got a string"),
    (minimal("when = 1979-05-27"), "when: unknown key"),
    (minimal(target="[target.Scim]\naddr = 'a:1'"), "target.Scim: invalid target name"),
    (minimal(target="[target.'a b']\naddr = 'a:1'"), 'target."a b": invalid target'),
    (minimal(target="[target]\nx = 1"), "target.x: expected a table with addr"),
    (minimal(target="[target.x]\nmethods = ['GET']"), "target.x: missing addr"),
    (minimal(target="[target.x]\naddr = 443"), "target.x.addr: expected a string"),
    (
        minimal(target="[target.x]\naddr = 'a:0'"),
        "target.x.addr: port must be 1-65535, got 0",
    ),
    (minimal(target="[target.x]\naddr = 'a:65536'"), "port must be 1-65535, got 65536"),
    (minimal(target="[target.x]\naddr = '10.0.0.1'"), "target.x.addr: missing port"),
    (in_target("port = 1"), "target.x.port: unknown key"),
    (in_target("method = ['GET']"), "did you mean methods?"),
    (in_target("methods = 'GET'"), "methods: expected an array"),
    (in_target("methods = []"), "empty list"),
    (in_target("methods = ['get']"), "upper-case HTTP methods"),
    (in_target("methods = [1]"), "upper-case HTTP methods"),
    (in_target("path_prefix = 'scim'"), "must start with '/'"),
    (in_target("path_prefix = '/a?b'"), "plain path"),
    (in_target("path_prefix = '/a/%2e'"), "plain path"),
    (in_target("path_prefix = '/a/../b'"), "'..' segments"),
    (in_target("max_concurrent = 0"), "must be 1-1024, got 0"),
    (in_target("max_concurrent = 1025"), "must be 1-1024"),
    (in_target("max_concurrent = true"), "expected an integer, got a boolean"),
    (in_target("max_concurrent = 1.5"), "expected an integer, got a float"),
    (in_target("timeout = 0"), "timeout: must be more than 0"),
    (in_target("timeout = -1"), "must be more than 0"),
    (in_target("timeout = 3601"), "at most 3600"),
    (in_target("timeout = nan"), "got nan"),
    (in_target("timeout = inf"), "got inf"),
    (in_target("timeout = '5'"), "expected a number, got a string"),
    (in_target("timeout = true"), "expected a number, got a boolean"),
    (in_target("insecure_skip_verify = 'yes'"), "expected a boolean"),
    (in_target("server_name = 'a b'"), "server_name: expected a host"),
    (in_target("server_name = 'a..b'"), "server_name: 'a..b' is not"),
    (in_target("pin_sha256 = 'AAAA'"), "pin_sha256: a SHA-256"),
    (in_target("ca_file = 3"), "ca_file: expected a string"),
    (
        in_target("insecure_skip_verify = true\nca_file = 'c.pem'"),
        "no effect with insecure_skip_verify",
    ),
    (
        in_target("insecure_skip_verify = true\nserver_name = 'a'"),
        "no effect with insecure_skip_verify",
    ),
    (in_target("[target.x.sub]\ny = 1"), "target.x.sub: unknown key"),
    ("service_id = ", "not valid TOML"),
    (minimal() + "\nhub = 'again'", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_files_give_one_line_naming_file_and_key(
    tmp_path: pathlib.Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        AgentConfig.load(path)
    message = only_line(caught)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert SECRET not in message


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_files_are_never_edited(
    tmp_path: pathlib.Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as caught:
        set_target(path, "new", "10.0.0.1:443")
    assert expected in only_line(caught)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["connect.toml"]


def test_proxy_errors_never_echo_the_password(tmp_path: pathlib.Path) -> None:
    for url in (
        f"ftp://agent:{PROXY_PASSWORD}@proxy:21",
        f"http://agent:{PROXY_PASSWORD}@proxy:3128/x",
        f"http://agent:{PROXY_PASSWORD}@proxy:70000",
        f"http://agent:{PROXY_PASSWORD} @proxy:3128",
    ):
        path = write(tmp_path, minimal(f"proxy = '{url}'"))
        with pytest.raises(ConfigError, match="proxy") as caught:
            AgentConfig.load(path)
        assert PROXY_PASSWORD not in only_line(caught)


def test_invalid_utf8_is_one_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "connect.toml"
    path.write_bytes(b"hub = '\xff'\n")
    with pytest.raises(ConfigError, match="not valid UTF-8") as caught:
        AgentConfig.load(path)
    only_line(caught)


@pytest.mark.parametrize(
    "hub",
    [
        "ws://127.0.0.1:8080/v1/connect",
        "ws://127.1.2.3/v1/connect",
        "ws://[::1]:8080/v1/connect",
        "ws://localhost:8080/v1/connect",
        "wss://hub.example.com",
        "wss://10.0.0.1:8443/v1/connect?x=1",
    ],
)
def test_accepted_hub_urls(tmp_path: pathlib.Path, hub: str) -> None:
    text = minimal().replace("wss://hub.example.com/v1/connect", hub)
    assert AgentConfig.load(write(tmp_path, text)).hub == hub


def test_tls_keys(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    target = f"""
[target.verified]
addr = "10.0.0.1:443"
server_name = "scim.corp"
ca_file = "ca.pem"
pin_sha256 = "{PIN}"

[target.pinned-only]
addr = "10.0.0.2:443"
insecure_skip_verify = true
pin_sha256 = "{PIN}"

[target.insecure]
addr = "10.0.0.3:443"
insecure_skip_verify = true
"""
    loaded = AgentConfig.load(
        write(tmp_path, minimal(f'hub_pin_sha256 = "{PIN}"', target))
    )
    assert loaded.hub_pin_sha256 == bytes(range(32))
    verified = loaded.targets["verified"].tls
    assert verified.verify is True
    assert verified.server_name == "scim.corp"
    assert verified.ca_file == tmp_path / "ca.pem"
    assert verified.pin_sha256 == bytes(range(32))
    assert loaded.targets["pinned-only"].tls.verify is False
    assert loaded.targets["pinned-only"].tls.pin_sha256 == bytes(range(32))
    assert loaded.targets["insecure"].tls.verify is False


def test_ca_files_must_exist_at_load(tmp_path: pathlib.Path) -> None:
    target = "[target.x]\naddr = 'a:1'\nca_file = 'missing.pem'"
    path = write(tmp_path, minimal(target=target))
    with pytest.raises(ConfigError, match=r"target\.x\.ca_file: no such file"):
        AgentConfig.load(path)
    # Listing targets does not need the CA file.
    assert [t.name for t in list_targets(path)] == ["x"]
    path = write(tmp_path, minimal("hub_ca_file = 'missing.pem'"))
    with pytest.raises(ConfigError, match="hub_ca_file: no such file"):
        AgentConfig.load(path)


def test_parse_pin() -> None:
    assert parse_pin(PIN) == bytes(range(32))
    with pytest.raises(ConfigError):
        parse_pin(PIN.rstrip("="))


def test_redact_url() -> None:
    assert redact_url("http://u:p@proxy:3128") == "http://***@proxy:3128"
    assert redact_url("https://proxy:3128/") == "https://proxy:3128/"
    assert redact_url("http://u:p@w@proxy:1/x@y") == "http://***@proxy:1/x@y"
    assert redact_url("u:p@proxy") == "***"
    assert redact_url("proxy:3128") == "proxy:3128"


# --------------------------------------------------------------------------
# State directory and secret files


def test_state_dir_is_created_private(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        created = ensure_state_dir(tmp_path / "a" / "run")
    finally:
        os.umask(old)
    assert created == tmp_path / "a" / "run"
    assert stat.S_IMODE(created.stat().st_mode) == 0o700
    assert ensure_state_dir(created) == created


def test_state_dir_open_to_others_is_refused(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o755)
    with pytest.raises(ConfigError) as caught:
        ensure_state_dir(run)
    message = only_line(caught)
    assert f"chmod 700 {run}" in message
    assert "mode 0755" in message


def test_state_dir_symlink_is_refused(tmp_path: pathlib.Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        ensure_state_dir(tmp_path / "run")


def test_state_dir_that_is_a_file_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        ensure_state_dir(tmp_path / "run")


def test_state_dir_that_cannot_be_created(tmp_path: pathlib.Path) -> None:
    (tmp_path / "parent").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="cannot create the state directory"):
        ensure_state_dir(tmp_path / "parent" / "run")


def test_state_dir_that_cannot_be_inspected(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot inspect"):
        ensure_state_dir(tmp_path / "file" / "run")


def pretend_to_be_uid(monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    """Make the checks see files as owned by someone else, without root."""
    monkeypatch.setattr(os, "geteuid", lambda: uid)


def test_state_dir_owned_by_another_user_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    owner = run.stat().st_uid
    pretend_to_be_uid(monkeypatch, owner + 12345)
    with pytest.raises(
        ConfigError, match=f"uid {owner}, not.*chown {owner + 12345} {run}"
    ):
        ensure_state_dir(run)


def test_secret_file_round_trip(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sid"
    write_secret_file(path, SECRET + "\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret_file(path) == SECRET
    write_secret_file(path, "other")
    assert read_secret_file(path) == "other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sid"]


def test_write_secret_file_reports_failures(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot write the secret file"):
        write_secret_file(tmp_path / "missing-dir" / "sid", SECRET)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o610])
def test_secret_file_open_to_others_is_refused(
    tmp_path: pathlib.Path, mode: int
) -> None:
    path = tmp_path / "sid"
    write_secret_file(path, SECRET)
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        read_secret_file(path)
    message = only_line(caught)
    assert f"chmod 600 {path}" in message
    assert SECRET not in message


def test_symlinked_secret_file_is_refused(tmp_path: pathlib.Path) -> None:
    real = tmp_path / "real"
    write_secret_file(real, SECRET)
    link = tmp_path / "sid"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="must not be a symlink") as caught:
        read_secret_file(link)
    assert SECRET not in only_line(caught)
    path = write(tmp_path, 'service_id_file = "sid"\nhub = "wss://h.example/"\n')
    with pytest.raises(ConfigError, match="symlink"):
        AgentConfig.load(path)


def test_secret_file_must_be_regular(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "sid"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="regular file"):
        read_secret_file(directory)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="regular file"):
        read_secret_file(fifo)


def test_missing_secret_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="no such secret file"):
        read_secret_file(tmp_path / "sid")


def test_unreadable_secret_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        read_secret_file(tmp_path / ("x" * 300))


def test_huge_or_binary_secret_files_are_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sid"
    write_secret_file(path, "a" * 5000)
    with pytest.raises(ConfigError, match="too large"):
        read_secret_file(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_secret_file(path)


def test_secret_file_owned_by_another_user_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sid"
    write_secret_file(path, SECRET)
    owner = path.stat().st_uid
    pretend_to_be_uid(monkeypatch, owner + 12345)
    with pytest.raises(ConfigError, match=f"owned by uid {owner},") as caught:
        read_secret_file(path)
    assert SECRET not in only_line(caught)


# --------------------------------------------------------------------------
# Editing


def test_set_target_adds_a_table_and_keeps_everything_else(
    config: pathlib.Path,
) -> None:
    set_target(config, "crm", "crm.corp:8443")
    assert config.read_text() == CONFIG + '\n[target.crm]\naddr = "crm.corp:8443"\n'
    assert AgentConfig.load(config).targets["crm"].addr == "crm.corp:8443"


def test_set_target_changes_only_the_address(config: pathlib.Path) -> None:
    set_target(config, "scim-server", "10.0.0.99:8443")
    expected = CONFIG.replace('"10.0.0.12:443"', '"10.0.0.99:8443"')
    assert config.read_text() == expected
    target = AgentConfig.load(config).targets["scim-server"]
    assert target.addr == "10.0.0.99:8443"
    assert target.tls.server_name == "scim.corp"
    assert target.methods is not None


def test_set_target_writes_the_canonical_address(config: pathlib.Path) -> None:
    set_target(config, "v6", "[fd00::1]:00443")
    assert config.read_text().endswith('[target.v6]\naddr = "[fd00::1]:443"\n')


def test_set_target_into_a_file_without_targets(tmp_path: pathlib.Path) -> None:
    text = minimal("# no targets yet")
    path = write(tmp_path, text)
    set_target(path, "first", "10.0.0.1:443")
    assert path.read_text() == text + '\n[target.first]\naddr = "10.0.0.1:443"\n'
    assert [t.addr for t in list_targets(path)] == ["10.0.0.1:443"]


@pytest.mark.parametrize(
    "layout",
    [
        '[target]\nold = { addr = "10.0.0.1:1" }  # inline\n',
        'target = { old = { addr = "10.0.0.1:1" } }\n',
        'target.old.addr = "10.0.0.1:1"  # dotted\n',
        '[target.old]\naddr = "10.0.0.1:1"',
    ],
)
def test_set_and_remove_work_on_every_layout(
    tmp_path: pathlib.Path, layout: str
) -> None:
    path = write(tmp_path, minimal(layout))
    set_target(path, "old", "10.0.0.2:2")
    set_target(path, "new", "10.0.0.3:3")
    assert {t.name: t.addr for t in list_targets(path)} == {
        "old": "10.0.0.2:2",
        "new": "10.0.0.3:3",
    }
    remove_target(path, "old")
    assert [t.name for t in list_targets(path)] == ["new"]


def test_remove_target_takes_its_comment_and_keeps_the_next_ones(
    config: pathlib.Path,
) -> None:
    remove_target(config, "scim-server")
    start = CONFIG.index("# The HR")
    end = CONFIG.index("# Payroll")
    assert config.read_text() == CONFIG[:start] + CONFIG[end:]


def test_remove_the_last_target_table(config: pathlib.Path) -> None:
    remove_target(config, "payroll")
    end = CONFIG.index("\n\n# Payroll")
    assert config.read_text() == CONFIG[: end + 1]


def test_remove_every_target(config: pathlib.Path) -> None:
    remove_target(config, "payroll")
    remove_target(config, "scim-server")
    assert list_targets(config) == []
    assert config.read_text() == CONFIG[: CONFIG.index("\n\n# The HR") + 1]


def test_remove_keeps_comments_at_the_end_of_the_file(tmp_path: pathlib.Path) -> None:
    tail = "\n# Keep this footer.\n"
    text = minimal(
        target='[target.a]\naddr = "a:1"\n\n[target.b]\naddr = "b:1"\n' + tail
    )
    path = write(tmp_path, text)
    remove_target(path, "b")
    assert path.read_text() == text.replace('[target.b]\naddr = "b:1"\n\n', "")
    remove_target(path, "a")
    assert path.read_text().endswith('connect"\n\n# Keep this footer.\n')


def test_remove_with_crlf_line_ends(tmp_path: pathlib.Path) -> None:
    text = minimal(target='[target.a]\naddr = "a:1"\n# b\n[target.b]\naddr = "b:1"\n')
    path = tmp_path / "connect.toml"
    path.write_bytes(text.replace("\n", "\r\n").encode())
    path.chmod(0o600)
    remove_target(path, "a")
    assert (
        path.read_bytes()
        == text.replace('[target.a]\naddr = "a:1"\n', "").replace("\n", "\r\n").encode()
    )


def test_remove_unknown_target(config: pathlib.Path) -> None:
    before = config.read_bytes()
    with pytest.raises(ConfigError) as caught:
        remove_target(config, "crm")
    message = only_line(caught)
    assert "no target named crm" in message
    assert "scim-server, payroll" in message
    assert config.read_bytes() == before


def test_remove_from_a_file_without_targets(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, minimal())
    with pytest.raises(ConfigError, match=r"declared: none"):
        remove_target(path, "crm")


@pytest.mark.parametrize(
    ("name", "addr", "expected"),
    [
        ("Scim", "10.0.0.1:443", "invalid target name 'Scim'"),
        ("scim_server", "10.0.0.1:443", "invalid target name"),
        ("-scim", "10.0.0.1:443", "invalid target name"),
        ("s\u0441im", "10.0.0.1:443", "invalid target name 's\\u0441im'"),
        ("", "10.0.0.1:443", "invalid target name"),
        ("crm", "10.0.0.1:0", "target.crm.addr: port must be 1-65535, got 0"),
        ("crm", "10.0.0.1:65536", "target.crm.addr: port must be 1-65535, got 65536"),
        ("crm", "10.0.0.1", "target.crm.addr: missing port"),
        ("crm", "fd00::1:443", "in brackets"),
        ("crm", "http://crm:443", "without scheme"),
        ("crm", "crm :443", "spaces"),
    ],
)
def test_set_target_refuses_bad_input_and_leaves_the_file(
    config: pathlib.Path, name: str, addr: str, expected: str
) -> None:
    before = config.read_bytes()
    with pytest.raises(ConfigError) as caught:
        set_target(config, name, addr)
    message = only_line(caught)
    assert message.startswith(f"{config}: ")
    assert expected in message
    assert config.read_bytes() == before
    assert sorted(p.name for p in config.parent.iterdir()) == ["connect.toml"]


def test_remove_target_refuses_invalid_names(config: pathlib.Path) -> None:
    before = config.read_bytes()
    with pytest.raises(ConfigError, match="invalid target name"):
        remove_target(config, "Payroll")
    assert config.read_bytes() == before


def test_editing_a_missing_file_does_not_create_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "connect.toml"
    with pytest.raises(ConfigError, match="no such config file; create it"):
        set_target(path, "a", "10.0.0.1:1")
    with pytest.raises(ConfigError, match="no such config file; create it"):
        remove_target(path, "a")
    with pytest.raises(ConfigError, match="no such config file"):
        list_targets(path)
    assert not path.exists()


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_edits_keep_the_mode(tmp_path: pathlib.Path, mode: int) -> None:
    path = write(tmp_path, CONFIG, mode=mode)
    set_target(path, "crm", "10.0.0.1:443")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    remove_target(path, "crm")
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_edits_replace_the_file_atomically_from_the_same_directory(
    config: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[pathlib.Path, int, bytes]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        temp = pathlib.Path(src)
        seen.append((temp, stat.S_IMODE(temp.stat().st_mode), config.read_bytes()))
        real_replace(src, dst)

    config.chmod(0o640)
    original = config.read_bytes()
    inode = config.stat().st_ino
    monkeypatch.setattr(os, "replace", spy)
    set_target(config, "crm", "10.0.0.1:443")
    [(temp, mode, before_replace)] = seen
    assert temp.parent == config.parent
    assert temp.name.startswith(".connect.toml.")
    assert mode == 0o640
    assert before_replace == original  # untouched until the rename
    assert config.stat().st_ino != inode
    assert not temp.exists()


def test_a_failed_write_leaves_the_file_and_no_debris(
    config: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    before = config.read_bytes()
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ConfigError, match="cannot write it: No space left") as caught:
        set_target(config, "crm", "10.0.0.1:443")
    only_line(caught)
    assert config.read_bytes() == before
    assert sorted(p.name for p in config.parent.iterdir()) == ["connect.toml"]


def test_editing_through_a_symlink_keeps_the_link(tmp_path: pathlib.Path) -> None:
    real_dir = tmp_path / "etc"
    real_dir.mkdir()
    real = write(real_dir, CONFIG)
    link = tmp_path / "connect.toml"
    link.symlink_to(real)
    set_target(link, "crm", "10.0.0.1:443")
    assert link.is_symlink()
    assert "[target.crm]" in real.read_text()


def test_root_editing_keeps_the_owner(
    config: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root the file really changes hands; otherwise root is simulated and
    # the ownership change the editor asks for is recorded instead.
    given: list[tuple[int, int]] = []
    if as_root():
        os.chown(config, 12345, 12346)
        owner = (12345, 12346)
    else:
        info = config.stat()
        owner = (info.st_uid, info.st_gid)
        pretend_to_be_uid(monkeypatch, 0)
        monkeypatch.setattr(
            os,
            "fchown",
            lambda fd, uid, gid: given.append((uid, gid)),
        )
    set_target(config, "crm", "10.0.0.1:443")
    info = config.stat()
    assert (info.st_uid, info.st_gid) == owner
    assert given == ([] if as_root() else [owner])


def test_an_unsafe_edit_is_refused(
    config: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # If tomlkit ever rendered something that does not parse back to the
    # intended data, the file must stay as it was.
    import tomlkit

    before = config.read_bytes()
    real_parse = tomlkit.parse

    def lossy(text: str) -> tomlkit.TOMLDocument:
        document = real_parse(text)
        document["state_dir"] = "elsewhere/"
        return document

    monkeypatch.setattr(tomlkit, "parse", lossy)
    with pytest.raises(ConfigError, match="cannot be edited safely"):
        set_target(config, "crm", "10.0.0.1:443")
    assert config.read_bytes() == before

    def failing(text: str) -> tomlkit.TOMLDocument:
        raise tomlkit.exceptions.ParseError(1, 1)

    monkeypatch.setattr(tomlkit, "parse", failing)
    with pytest.raises(ConfigError, match="cannot be edited safely"):
        set_target(config, "crm", "10.0.0.1:443")
    assert config.read_bytes() == before


def test_list_targets_needs_no_secret(tmp_path: pathlib.Path) -> None:
    text = 'service_id_file = "missing"\nhub = "wss://h.example/"\n'
    path = write(
        tmp_path, text + '[target.b]\naddr = "b:1"\n[target.a]\naddr = "a:1"\n', 0o644
    )
    targets = list_targets(path)
    assert targets == [
        Target(name="b", host="b", port=1),
        Target(name="a", host="a", port=1),
    ]
