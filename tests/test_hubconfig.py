"""The hub's file, hub.toml (trustelem_relay._hubconfig)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustelem_relay._errors import ConfigError
from trustelem_relay._hubconfig import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_LISTEN,
    HubConfig,
    HubLimits,
    ListenAddress,
)

MiB = 1024 * 1024


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        HubConfig.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --------------------------------------------------------------------------
# Good files


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    config = HubConfig.load(write(tmp_path, ""))

    assert config.listen == ListenAddress("127.0.0.1", 8443)
    assert config.admin_listen == ListenAddress("127.0.0.1", 8444)
    assert config.tls_cert is None
    assert config.tls_key is None
    assert not config.tls
    assert config.store == str(tmp_path / "hub.db")
    assert config.path == "/v1/connect"
    assert config.source == tmp_path / "hub.toml"
    assert config.limits == HubLimits(
        heartbeat_interval=15,
        heartbeat_timeout=10,
        request_timeout=55,
        max_in_flight=64,
        max_request_body=1 * MiB,
        max_response_body=16 * MiB,
    )


def test_every_key_is_read(tmp_path: Path) -> None:
    config = HubConfig.load(
        write(
            tmp_path,
            """
            listen = "0.0.0.0:443"
            admin_listen = "[::1]:9000"
            tls_cert = "tls/hub.pem"
            tls_key = "/etc/hub/key.pem"
            store = "state/hub.sqlite"
            path = "/relay/v1/connect"

            [limits]
            heartbeat_interval = 20
            heartbeat_timeout = 7.5
            request_timeout = 120
            max_in_flight = 8
            max_request_body = 2048
            max_response_body = 33554432
            """,
        )
    )

    assert config.listen == ListenAddress("0.0.0.0", 443)  # noqa: S104
    assert config.admin_listen == ListenAddress("::1", 9000)
    assert config.tls
    assert config.tls_cert == tmp_path / "tls" / "hub.pem"
    assert config.tls_key == Path("/etc/hub/key.pem")
    assert config.store == str(tmp_path / "state" / "hub.sqlite")
    assert config.path == "/relay/v1/connect"
    assert config.limits == HubLimits(20.0, 7.5, 120.0, 8, 2048, 32 * MiB)


def test_relative_paths_follow_the_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "hub.toml").write_text('store = "hub.db"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    config = HubConfig.load("etc/hub.toml")

    assert config.store == str(config_dir / "hub.db")
    assert Path(config.store).is_absolute()


def test_memory_store_is_kept_as_is(tmp_path: Path) -> None:
    config = HubConfig.load(write(tmp_path, 'store = ":memory:"\n'))
    assert config.store == ":memory:"


def test_port_zero_may_repeat(tmp_path: Path) -> None:
    text = 'listen = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
    config = HubConfig.load(write(tmp_path, text))
    assert config.listen.port == config.admin_listen.port == 0


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443),
        ("0.0.0.0:1", "0.0.0.0", 1),  # noqa: S104
        ("[::]:65535", "::", 65535),
        ("[2001:db8::1]:443", "2001:db8::1", 443),
        ("localhost:80", "localhost", 80),
        ("hub.example.com:8443", "hub.example.com", 8443),
        ("hub-1.example.com.:8443", "hub-1.example.com.", 8443),
    ],
)
def test_listen_addresses_parse(text: str, host: str, port: int) -> None:
    address = ListenAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == text


def test_defaults_are_loopback() -> None:
    assert DEFAULT_LISTEN.host == DEFAULT_ADMIN_LISTEN.host == "127.0.0.1"
    assert HubConfig().listen == DEFAULT_LISTEN


def test_tls_files_go_together_in_code_too() -> None:
    with pytest.raises(ValueError, match="both or neither"):
        HubConfig(tls_cert=Path("cert.pem"))


# --------------------------------------------------------------------------
# Bad files: every error is one line naming the file and the key


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        # unknown keys, at the top and in [limits]
        ('listne = "127.0.0.1:1"', "listne", "did you mean 'listen'"),
        ("colour = 1", "colour", "known keys: admin_listen, limits, listen"),
        ("[app.crm]\nurl = 'x'", "app", "unknown key"),
        ("[limits]\nheartbeat = 5", "limits.heartbeat", "did you mean"),
        ("[limits]\nfoo = 5", "limits.foo", "unknown key"),
        # wrong types
        ("listen = 8443", "listen", "got an integer"),
        ("admin_listen = ['127.0.0.1', 1]", "admin_listen", "got an array"),
        ("tls_cert = 1\ntls_key = 'k'", "tls_cert", "expected a file path"),
        ("tls_cert = 'c'\ntls_key = true", "tls_key", "got a boolean"),
        ("store = true", "store", "expected a string, got a boolean"),
        ("path = 1.5", "path", "got a float"),
        ("listen = 2026-01-01T00:00:00Z", "listen", "got a date or time"),
        ("limits = 5", "limits", "expected a table"),
        ('[limits]\nheartbeat_interval = "15"', "limits.heartbeat_interval", "string"),
        ("[limits]\nheartbeat_timeout = true", "limits.heartbeat_timeout", "boolean"),
        ("[limits]\nrequest_timeout = [55]", "limits.request_timeout", "an array"),
        ("[limits]\nmax_in_flight = 1.5", "limits.max_in_flight", "got a float"),
        ("[limits]\nmax_in_flight = true", "limits.max_in_flight", "boolean"),
        ("[limits]\nmax_request_body = '1M'", "limits.max_request_body", "string"),
        ("[limits]\nmax_response_body = 1e6", "limits.max_response_body", "float"),
        # bad addresses
        ('listen = "localhost"', "listen", "has no port"),
        ('listen = ":8443"', "listen", "host is empty"),
        ('listen = "::1:8443"', "listen", "in brackets"),
        ('listen = "[::1]"', "listen", "[IPv6]:PORT"),
        ('listen = "[::1]:"', "listen", "not a number"),
        ('listen = "[zz::1]:80"', "listen", "not an IPv6 address"),
        ('listen = "[127.0.0.1]:80"', "listen", "not an IPv6 address"),
        ('listen = "1.2.3.256:80"', "listen", "not an IPv4 address"),
        ('listen = "1.2.3:80"', "listen", "not an IPv4 address"),
        ('listen = "host:abc"', "listen", "not a number"),
        ('listen = "host:+80"', "listen", "not a number"),
        ('listen = "host:-1"', "listen", "not a number"),
        ('listen = "host:8_0"', "listen", "not a number"),
        ('listen = "host:65536"', "listen", "above 65535"),
        ('listen = "host:١٢٣"', "listen", "not a number"),
        ('listen = "host:0000080"', "listen", "not a number"),
        ('listen = "bad_host:80"', "listen", "neither an IP address"),
        ('listen = "-bad:80"', "listen", "neither an IP address"),
        ('listen = "a..b:80"', "listen", "neither an IP address"),
        ('admin_listen = "host name:80"', "admin_listen", "neither"),
        ('admin_listen = "127.0.0.1:8443"', "admin_listen", "same address as listen"),
        # TLS files go together
        ('tls_cert = "cert.pem"', "tls_key", "required when tls_cert is set"),
        ('tls_key = "key.pem"', "tls_cert", "required when tls_key is set"),
        ('tls_cert = ""\ntls_key = "k"', "tls_cert", "is empty"),
        # store and path
        ('store = ""', "store", "is empty"),
        ('path = ""', "path", "not a URL path"),
        ('path = "v1/connect"', "path", "not a URL path"),
        ('path = "/v1/con nect"', "path", "not a URL path"),
        ('path = "/v1/connect?x=1"', "path", "not a URL path"),
        ('path = "/v1/connect#top"', "path", "not a URL path"),
        ('path = "/v1/\\u00e9"', "path", "not a URL path"),
        # limits out of range
        ("[limits]\nheartbeat_interval = 0", "limits.heartbeat_interval", "from 1"),
        ("[limits]\nheartbeat_interval = -5", "limits.heartbeat_interval", "from 1"),
        ("[limits]\nheartbeat_interval = 3601", "limits.heartbeat_interval", "3600"),
        ("[limits]\nheartbeat_timeout = nan", "limits.heartbeat_timeout", "not nan"),
        ("[limits]\nheartbeat_timeout = inf", "limits.heartbeat_timeout", "not inf"),
        ("[limits]\nrequest_timeout = 0.5", "limits.request_timeout", "from 1"),
        ("[limits]\nmax_in_flight = 0", "limits.max_in_flight", "from 1"),
        ("[limits]\nmax_in_flight = 10001", "limits.max_in_flight", "to 10000"),
        ("[limits]\nmax_request_body = -1", "limits.max_request_body", "bytes"),
        ("[limits]\nmax_response_body = 0", "limits.max_response_body", "bytes"),
        (
            "[limits]\nmax_response_body = 1073741825",
            "limits.max_response_body",
            "to 1073741824 bytes",
        ),
    ],
)
def test_bad_file_gives_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    message = load_error(tmp_path, text + "\n")
    assert f": {key}: " in message
    assert fragment in message


def test_misspelt_key_is_reported_before_its_missing_partner(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'tls_cret = "c.pem"\ntls_key = "k.pem"\n')
    assert ": tls_cret: unknown key; did you mean 'tls_cert'?" in message


def test_invalid_toml_is_reported_with_its_position(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'listen = "127.0.0.1:1\n')
    assert "not valid TOML" in message
    assert "line 1" in message


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'path = "/a"\npath = "/b"\n')
    assert "not valid TOML" in message


def test_missing_file_says_how_to_start(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="no such file; an empty file") as info:
        HubConfig.load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        HubConfig.load(tmp_path)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_bytes(b'path = "/\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        HubConfig.load(path)
