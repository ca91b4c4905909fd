"""The command line's configuration commands (trustelem_relay._cli):
``targets``, ``set-target``, ``remove-target``, and what every command
shares: --version, --help, one-line errors and exit statuses."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

import pytest

from trustelem_relay import _cli
from trustelem_relay._cli import RESERVED_COMMANDS, main
from trustelem_relay._config import CONFIG_ENV
from trustelem_relay._errors import ConfigError, TargetUnreachable
from trustelem_relay._version import __version__

SECRET = "2jy34wpcohrhdytr6hutym6qfi2l7nnw"
PROXY_PASSWORD = "pr0xy-pa55word"
PIN = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

CONFIG = f"""\
# Paris office.
service_id = "{SECRET}"
hub = "wss://hub.example.com/v1/connect"
proxy = "http://agent:{PROXY_PASSWORD}@proxy.corp:3128"

# HR.
[target.scim-server]
addr = "10.0.0.12:443"  # load balancer
methods = ["GET", "POST"]
path_prefix = "/scim/v2"

[target.legacy]
addr = "[fd00::7]:8443"
insecure_skip_verify = true
pin_sha256 = "{PIN}"
max_concurrent = 4
timeout = 10

[target.lab]
addr = "lab.corp:443"
insecure_skip_verify = true
"""


@pytest.fixture
def config(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    path = tmp_path / "connect.toml"
    path.write_text(CONFIG)
    path.chmod(0o600)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return path


def run(
    capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]
) -> tuple[int, str, str]:
    status = main([os.fspath(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("trustelem-relay: error: ")
    assert "Traceback" not in err
    return lines[0]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        assert PROXY_PASSWORD not in text


# --------------------------------------------------------------------------
# targets


def test_targets_lists_one_line_per_target(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "--config", config, "targets")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == [
        "scim-server",
        "10.0.0.12:443",
        "methods=GET,POST",
        "prefix=/scim/v2",
    ]
    assert lines[1].split()[:2] == ["legacy", "[fd00::7]:8443"]
    assert "tls-verify=off (INSECURE pin-only)" in lines[1]
    assert "pinned" in lines[1]
    assert "max-concurrent=4" in lines[1]
    assert "timeout=10s" in lines[1]
    assert lines[2].split()[:2] == ["lab", "lab.corp:443"]
    assert "tls-verify=off (INSECURE)" in lines[2]
    # Names and addresses line up in columns.
    assert lines[0].index("10.0.0.12") == lines[1].index("[fd00::7]")
    assert_no_secret(out, err)


def test_targets_shows_tls_details(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "connect.toml"
    path.write_text(
        'service_id_file = "sid"\nhub = "wss://h.example/"\n'
        '[target.a]\naddr = "a:1"\nserver_name = "scim.corp"\n'
        'ca_file = "ca\\u001b.pem"\n'
    )
    status, out, _ = run(capsys, "--config", path, "targets")
    assert status == 0
    assert "server-name=scim.corp" in out
    assert "ca-file=" in out
    assert "\x1b" not in out


def test_targets_on_a_file_without_targets(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "connect.toml"
    path.write_text('service_id_file = "sid"\nhub = "wss://h.example/"\n')
    status, out, err = run(capsys, "--config", path, "targets")
    assert (status, err) == (0, "")
    assert "no targets declared" in out
    assert "set-target NAME HOST:PORT" in out


def test_config_comes_from_the_environment(
    config: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CONFIG_ENV, os.fspath(config))
    status, out, _ = run(capsys, "targets")
    assert status == 0
    assert "scim-server" in out


def test_config_may_follow_the_command(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    status, out, _ = run(capsys, "targets", "--config", config)
    assert status == 0
    assert "scim-server" in out
    # Given twice, the one after the command wins; absent after it, the
    # global one stays.
    status, out, _ = run(
        capsys, "--config", tmp_path / "nope.toml", "targets", "--config", config
    )
    assert status == 0
    status, _, _ = run(capsys, "--config", config, "remove-target", "lab")
    assert status == 0


def test_config_defaults_to_the_working_directory(
    config: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(config.parent)
    status, out, _ = run(capsys, "targets")
    assert status == 0
    assert "scim-server" in out


# --------------------------------------------------------------------------
# set-target and remove-target


def test_set_target_declares_and_reports(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys, "--config", config, "set-target", "crm", "[::1]:8443"
    )
    assert (status, err) == (0, "")
    assert out == f"target crm -> [::1]:8443 (written to {config})\n"
    assert config.read_text() == CONFIG + '\n[target.crm]\naddr = "[::1]:8443"\n'


def test_set_target_changes_an_address_keeping_comments(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, _ = run(
        capsys, "--config", config, "set-target", "scim-server", "10.0.0.9:443"
    )
    assert status == 0
    assert config.read_text() == CONFIG.replace("10.0.0.12:443", "10.0.0.9:443")


def test_remove_target(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "--config", config, "remove-target", "lab")
    assert (status, err) == (0, "")
    assert out == f"target lab removed (written to {config})\n"
    assert "[target.lab]" not in config.read_text()
    assert "# HR." in config.read_text()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["set-target", "Bad", "10.0.0.1:443"], "invalid target name 'Bad'"),
        (
            ["set-target", "crm", "10.0.0.1:0"],
            "target.crm.addr: port must be 1-65535, got 0",
        ),
        (["set-target", "crm", "10.0.0.1:65536"], "port must be 1-65535, got 65536"),
        (["set-target", "crm", "10.0.0.1"], "target.crm.addr: missing port"),
        (["remove-target", "crm"], "no target named crm"),
        (["remove-target", "Lab"], "invalid target name"),
    ],
)
def test_bad_edits_exit_2_with_one_line(
    config: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    before = config.read_bytes()
    status, out, err = run(capsys, "--config", config, *argv)
    assert status == 2
    assert out == ""
    line = assert_one_line_error(err)
    assert expected in line
    assert f"{config}: " in line
    assert config.read_bytes() == before
    assert_no_secret(out, err)


def test_missing_config_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "connect.toml"
    for argv in (["targets"], ["set-target", "a", "a:1"], ["remove-target", "a"]):
        status, _, err = run(capsys, "--config", missing, *argv)
        assert status == 2
        assert "no such config file" in assert_one_line_error(err)
    assert not missing.exists()


def test_invalid_file_is_reported_without_secrets(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(
        CONFIG.replace(SECRET, SECRET.upper()).replace("proxy =", "proxyy =")
    )
    for argv in (["targets"], ["set-target", "a", "a:1"], ["remove-target", "lab"]):
        status, out, err = run(capsys, "--config", config, *argv)
        assert status == 2
        assert_one_line_error(err)
        assert_no_secret(out, err)
        assert SECRET.upper() not in err


def test_no_command_output_ever_holds_a_secret(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [
        ["targets"],
        ["set-target", "crm", "10.0.0.1:443"],
        ["set-target", "crm", "10.0.0.1:0"],
        ["remove-target", "crm"],
        ["remove-target", "crm"],
        ["--log-level", "DEBUG", "targets"],
        ["--help"],
    ]
    for argv in commands:
        _, out, err = run(capsys, "--config", config, *argv)
        assert_no_secret(out, err)


# --------------------------------------------------------------------------
# Usage, help, version, exit statuses


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--version")
    assert status == 0
    assert out == f"trustelem-relay {__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [[], ["targets"], ["set-target"], ["remove-target"], ["hub"]],
)
def test_every_command_has_help(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, out, err = run(capsys, *argv, "--help")
    assert (status, err) == (0, "")
    assert out.startswith("usage: trustelem-relay")


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "--help")
    for command in ("targets", "set-target", "remove-target", "hub", "--config"):
        assert command in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["set-target", "crm"], "required: HOST:PORT"),
        (["set-target", "a", "b:1", "extra"], "unrecognized arguments: extra"),
        (["--log-level", "LOUD", "targets"], "invalid choice: 'LOUD'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    line = assert_one_line_error(err)
    assert expected in line
    assert "--help" in line


def test_log_level_is_case_insensitive(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, _ = run(capsys, "--log-level", "debug", "--config", config, "targets")
    assert status == 0


def test_runtime_failures_exit_1(
    config: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def disk_gone(path: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_cli, "list_targets", disk_gone)
    status, _, err = run(capsys, "--config", config, "targets")
    assert status == 1
    assert "Input/output error" in assert_one_line_error(err)

    def unreachable(path: object) -> None:
        raise TargetUnreachable("could not connect\nto anything")

    monkeypatch.setattr(_cli, "list_targets", unreachable)
    status, _, err = run(capsys, "--config", config, "targets")
    assert status == 1
    assert "could not connect to anything" in assert_one_line_error(err)


def test_interrupt_exits_130(
    config: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(path: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "list_targets", interrupted)
    status, _, err = run(capsys, "--config", config, "targets")
    assert status == 130
    assert_one_line_error(err)


def test_handlers_may_return_none(
    config: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def quiet(args: argparse.Namespace) -> None:
        return None

    monkeypatch.setattr(_cli, "cmd_targets", quiet)
    assert run(capsys, "--config", config, "targets") == (0, "", "")


def test_config_errors_raised_by_handlers_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad(path: object) -> None:
        raise ConfigError("connect.toml: hub: expected a wss:// URL")

    monkeypatch.setattr(_cli, "list_targets", bad)
    status, _, err = run(capsys, "targets")
    assert status == 2
    assert assert_one_line_error(err).endswith("hub: expected a wss:// URL")


def test_config_commands_leave_the_reserved_names_free() -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    _cli._register_target_commands(subparsers)
    assert set(subparsers.choices).isdisjoint(RESERVED_COMMANDS)
    assert set(subparsers.choices) == {"targets", "set-target", "remove-target"}


def test_main_leaves_no_log_handler_behind(
    config: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    logger = logging.getLogger("trustelem_relay")
    before = (list(logger.handlers), logger.level)
    run(capsys, "--log-level", "DEBUG", "--config", config, "targets")
    run(capsys, "--config", config, "remove-target", "nope")
    assert (logger.handlers, logger.level) == before


def test_errors_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def odd(path: object) -> None:
        raise OSError(2, "No such file", "run/\x1b[2Jevil")

    monkeypatch.setattr(_cli, "list_targets", odd)
    status, _, err = run(capsys, "targets")
    assert status == 1
    assert "\x1b" not in err
    assert "\\x1b" in assert_one_line_error(err)


# --------------------------------------------------------------------------
# The real entry point, in a child process


def cli(
    *argv: str | os.PathLike[str], cwd: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    return subprocess.run(
        [sys.executable, "-m", "trustelem_relay", *[os.fspath(arg) for arg in argv]],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def test_module_entry_point_version(tmp_path: pathlib.Path) -> None:
    done = cli("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"trustelem-relay {__version__}\n",
        "",
    )


def test_module_entry_point_edits_and_lists(config: pathlib.Path) -> None:
    done = cli("set-target", "crm", "10.0.0.5:443", cwd=config.parent)
    assert (done.returncode, done.stderr) == (0, "")
    done = cli("targets", cwd=config.parent)
    assert done.returncode == 0
    assert "crm" in done.stdout
    assert "INSECURE" in done.stdout
    assert_no_secret(done.stdout, done.stderr)


def test_module_entry_point_errors_are_one_line(config: pathlib.Path) -> None:
    before = config.read_bytes()
    for argv in (
        ("set-target", "crm", "10.0.0.5:0"),
        ("set-target", "CRM", "10.0.0.5:443"),
        ("remove-target", "nope"),
        ("--config", "elsewhere.toml", "targets"),
        (),
    ):
        done = cli(*argv, cwd=config.parent)
        assert done.returncode == 2, done
        assert done.stdout == ""
        assert_one_line_error(done.stderr)
        assert_no_secret(done.stdout, done.stderr)
    assert config.read_bytes() == before


def test_module_entry_point_never_prints_a_bad_secret(config: pathlib.Path) -> None:
    leaked = "abcdefghijklmnopqrstuvwxyz234560"  # one character off the alphabet
    config.write_text(CONFIG.replace(SECRET, leaked))
    done = cli("set-target", "crm", "10.0.0.5:443", cwd=config.parent)
    assert done.returncode == 2
    assert "service_id" in assert_one_line_error(done.stderr)
    assert leaked not in done.stderr
    assert leaked[:16] not in done.stderr
    assert PROXY_PASSWORD not in done.stderr
