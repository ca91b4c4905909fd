"""``doctor`` against real parts: a hub served in the test, scim2-server, the
TLS front with the trustme CA, the CONNECT proxy.

The async core, :func:`diagnose`, runs in the test's trio loop; the exit
status is checked through the CLI's ``main`` run in a worker thread (it
calls ``trio.run`` itself).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import pathlib
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import h11
import pytest
import trio
from support.ports import LOOPBACK
from support.proxy import PROXY_USER, ConnectProxy
from support.scim import ScimServer, ScimTlsServer, TlsFront, run_scim_server
from support.tls import TlsMaterial

from trustelem_relay import Hub
from trustelem_relay._cli import main
from trustelem_relay._config import AgentConfig
from trustelem_relay._doctor import diagnose

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

WRONG_PASSWORD = "wr0ng:pa55%word"


@dataclass
class RunningHub:
    hub: Hub
    port: int
    service_id: str
    scheme: str = "ws"

    @property
    def url(self) -> str:
        return f"{self.scheme}://localhost:{self.port}/v1/connect"


async def start_hub(
    nursery: trio.Nursery, tls: TlsMaterial | None = None
) -> RunningHub:
    """A hub with one service on 127.0.0.1, over wss when given a cert."""
    served = Hub()
    service = served.create_service("acme")
    context = None if tls is None else tls.server_context()
    port = await nursery.start(
        lambda task_status: served.serve(
            LOOPBACK, 0, ssl_context=context, task_status=task_status
        )
    )
    scheme = "ws" if tls is None else "wss"
    return RunningHub(served, port, service.service_id, scheme=scheme)


@pytest.fixture
async def hub(nursery: trio.Nursery) -> RunningHub:
    return await start_hub(nursery)


@pytest.fixture(scope="module")
def scim_server() -> Iterator[ScimServer]:
    """One scim2-server for the module: the doctor only reads from it."""
    with run_scim_server() as server:
        yield server


@pytest.fixture
async def scim_tls_server(
    scim_server: ScimServer, tls: TlsMaterial, nursery: trio.Nursery
) -> ScimTlsServer:
    """The module's scim2-server behind a TLS front of its own."""
    front = TlsFront(scim_server.port, tls.server_context())
    port = await nursery.start(front.serve)
    return ScimTlsServer(port=port, upstream=scim_server, tls=tls, front=front)


def toml_value(value: object) -> str:
    # JSON strings, numbers and booleans are valid TOML values.
    return json.dumps(value)


def write_config(
    directory: pathlib.Path,
    hub_url: str,
    service_id: str,
    targets: Mapping[str, Mapping[str, object]],
    **top: object,
) -> pathlib.Path:
    """Write connect.toml (mode 0600) and return its path."""
    lines = [
        f"service_id = {toml_value(service_id)}",
        'state_dir = "run"',
        f"hub = {toml_value(hub_url)}",
    ]
    lines += [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for name, table in targets.items():
        lines.append(f"\n[target.{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path = directory / "connect.toml"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


async def run_doctor(
    config: pathlib.Path | AgentConfig, **options: object
) -> tuple[bool, dict[str, tuple[str, str]], str]:
    """Run the doctor; return its verdict, each check's (outcome, detail)
    by check name, and the whole output."""
    out = io.StringIO()
    healthy = await diagnose(config, out=out, **options)  # type: ignore[arg-type]
    text = out.getvalue()
    checks: dict[str, tuple[str, str]] = {}
    for line in text.splitlines()[:-1]:
        outcome, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        checks[name] = (outcome, detail)
    assert text.splitlines()[-1].startswith("summary: ")
    return healthy, checks, text


def outcomes(checks: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: outcome for name, (outcome, _) in checks.items()}


# --------------------------------------------------------------------------
# Everything healthy


async def test_doctor_passes_every_check_against_a_hub_and_a_scim_server(
    hub: RunningHub, scim_server: ScimServer, tmp_path: pathlib.Path
) -> None:
    path = write_config(
        tmp_path,
        hub.url,
        hub.service_id,
        {"scim-server": {"addr": scim_server.address, "path_prefix": "/v2"}},
    )

    healthy, checks, text = await run_doctor(path)

    assert healthy, text
    assert outcomes(checks) == {
        "config": "ok",
        "state dir": "ok",
        "secrets": "ok",
        "hub TCP": "ok",
        "hub websocket": "ok",
        "hub handshake": "ok",
        "target scim-server DNS": "ok",
        "target scim-server TCP": "ok",
        "target scim-server SCIM": "ok",
    }
    assert "GET /v2/ServiceProviderConfig: 200" in checks["target scim-server SCIM"][1]
    assert "protocol 1" in checks["hub handshake"][1]
    assert text.splitlines()[-1].startswith("summary: 9 ok, 0 warning(s), 0 failed")
    assert hub.service_id not in text
    # The doctor proves the handshake but never registers as an agent.
    assert hub.hub.agents(hub.service_id) == []
    # Nor does it create the state directory: that is run's job.
    assert not (tmp_path / "run").exists()


async def test_doctor_resolves_a_target_host_name(
    hub: RunningHub, scim_server: ScimServer, tmp_path: pathlib.Path
) -> None:
    path = write_config(
        tmp_path,
        hub.url,
        hub.service_id,
        {"scim-server": {"addr": f"localhost:{scim_server.port}"}},
    )

    healthy, checks, _ = await run_doctor(path, scim_path="/v2")

    assert healthy
    outcome, detail = checks["target scim-server DNS"]
    assert outcome == "ok"
    assert detail.startswith("localhost resolves to ")


async def test_doctor_accepts_a_loaded_config(
    hub: RunningHub, scim_server: ScimServer, tmp_path: pathlib.Path
) -> None:
    path = write_config(
        tmp_path,
        hub.url,
        hub.service_id,
        {"scim-server": {"addr": scim_server.address, "path_prefix": "/v2"}},
    )

    healthy, checks, _ = await run_doctor(AgentConfig.load(path))

    assert healthy
    assert checks["config"][0] == "ok"


# --------------------------------------------------------------------------
# The hub leg


async def test_doctor_fails_the_handshake_with_a_wrong_service_id(
    hub: RunningHub, tmp_path: pathlib.Path
) -> None:
    other = Hub().create_service("elsewhere").service_id
    path = write_config(tmp_path, hub.url, other, {})

    healthy, checks, text = await run_doctor(path)

    assert not healthy
    assert checks["hub websocket"][0] == "ok"
    outcome, detail = checks["hub handshake"]
    assert outcome == "FAIL"
    assert detail.startswith("authentication failed: the hub does not know")
    assert other not in text


async def test_doctor_notices_a_rotated_service_id(
    hub: RunningHub, tmp_path: pathlib.Path
) -> None:
    path = write_config(tmp_path, hub.url, hub.service_id, {})
    hub.hub.rotate_service("acme")

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    assert checks["hub handshake"][0] == "FAIL"
    assert "rotated" in checks["hub handshake"][1]


async def test_doctor_exits_1_when_a_check_fails(
    hub: RunningHub, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Hub().create_service("elsewhere").service_id
    path = write_config(tmp_path, hub.url, other, {})

    argv = ["doctor", "--config", str(path), "--timeout", "3"]
    status = await trio.to_thread.run_sync(main, argv)

    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL  hub handshake: authentication failed" in out
    assert other not in out


async def test_doctor_exits_0_when_nothing_failed(
    hub: RunningHub, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, hub.url, hub.service_id, {})

    status = await trio.to_thread.run_sync(main, ["--config", str(path), "doctor"])

    out = capsys.readouterr().out
    assert status == 0, out
    # No target is declared: worth a warning, not a failure.
    assert out.splitlines()[0].startswith("warn  config: ")


async def test_doctor_fails_when_the_hub_is_not_listening(
    tmp_path: pathlib.Path, closed_port: int
) -> None:
    service_id = Hub().create_service("acme").service_id
    port = closed_port
    path = write_config(tmp_path, f"ws://127.0.0.1:{port}/v1/connect", service_id, {})

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    assert checks["hub TCP"] == (
        "FAIL",
        f"cannot connect to the hub at 127.0.0.1:{port}: Connection refused",
    )
    assert "hub websocket" not in checks


async def test_doctor_fails_a_websocket_upgrade_on_the_wrong_path(
    hub: RunningHub, tmp_path: pathlib.Path
) -> None:
    url = f"ws://127.0.0.1:{hub.port}/v2/elsewhere"
    path = write_config(tmp_path, url, hub.service_id, {})

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    outcome, detail = checks["hub websocket"]
    assert outcome == "FAIL"
    assert "HTTP 404" in detail
    assert "hub handshake" not in checks


async def test_doctor_shows_the_hub_certificate_and_checks_its_pin(
    nursery: trio.Nursery,
    tls: TlsMaterial,
    ca_file: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    running = await start_hub(nursery, tls)
    pin = base64.b64encode(tls.spki_sha256()).decode()
    path = write_config(
        tmp_path,
        running.url,
        running.service_id,
        {},
        hub_ca_file=str(ca_file),
        hub_pin_sha256=pin,
    )

    healthy, checks, text = await run_doctor(path)

    assert healthy, text
    outcome, detail = checks["hub TLS"]
    assert outcome == "ok"
    assert "verified" in detail
    assert "localhost" in detail
    assert "expires 3000-01-01" in detail
    assert "public key matches the pin" in detail
    assert checks["hub handshake"][0] == "ok"


async def test_doctor_fails_a_hub_certificate_that_does_not_match_the_pin(
    nursery: trio.Nursery,
    tls: TlsMaterial,
    other_tls: TlsMaterial,
    ca_file: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    running = await start_hub(nursery, tls)
    pin = base64.b64encode(other_tls.spki_sha256()).decode()
    path = write_config(
        tmp_path,
        running.url,
        running.service_id,
        {},
        hub_ca_file=str(ca_file),
        hub_pin_sha256=pin,
    )

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    outcome, detail = checks["hub TLS"]
    assert outcome == "FAIL"
    assert "does NOT match the configured pin" in detail
    assert "hub websocket" not in checks


async def test_doctor_fails_a_hub_certificate_from_an_untrusted_ca(
    nursery: trio.Nursery,
    other_tls: TlsMaterial,
    ca_file: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    running = await start_hub(nursery, other_tls)
    path = write_config(
        tmp_path, running.url, running.service_id, {}, hub_ca_file=str(ca_file)
    )

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    outcome, detail = checks["hub TLS"]
    assert outcome == "FAIL"
    assert "certificate verification failed" in detail


# --------------------------------------------------------------------------
# Through a proxy


async def test_doctor_reaches_the_hub_through_the_proxy(
    hub: RunningHub, connect_proxy: ConnectProxy, tmp_path: pathlib.Path
) -> None:
    path = write_config(tmp_path, hub.url, hub.service_id, {}, proxy=connect_proxy.url)

    healthy, checks, text = await run_doctor(path)

    assert healthy, text
    assert checks["proxy"][0] == "ok"
    assert checks["proxy CONNECT"][0] == "ok"
    assert f"tunnel to localhost:{hub.port} open" in checks["proxy CONNECT"][1]
    assert checks["hub handshake"][0] == "ok"
    assert "hub TCP" not in checks
    assert connect_proxy.password not in text
    assert urllib.parse.quote(connect_proxy.password, safe="") not in text


async def test_doctor_fails_a_proxy_that_refuses_the_credentials(
    hub: RunningHub, connect_proxy: ConnectProxy, tmp_path: pathlib.Path
) -> None:
    proxy_url = connect_proxy.url_with(PROXY_USER, WRONG_PASSWORD)
    path = write_config(tmp_path, hub.url, hub.service_id, {}, proxy=proxy_url)

    healthy, checks, text = await run_doctor(path)

    assert not healthy
    assert checks["proxy"][0] == "ok"
    outcome, detail = checks["proxy CONNECT"]
    assert outcome == "FAIL"
    assert "refused the credentials (407)" in detail
    assert "hub handshake" not in checks
    assert WRONG_PASSWORD not in text
    assert urllib.parse.quote(WRONG_PASSWORD, safe="") not in text
    assert [record.status for record in connect_proxy.records] == [407]


async def test_doctor_fails_an_unreachable_proxy(
    hub: RunningHub, tmp_path: pathlib.Path, closed_port: int
) -> None:
    proxy_url = f"http://{PROXY_USER}:{WRONG_PASSWORD}@127.0.0.1:{closed_port}"
    path = write_config(tmp_path, hub.url, hub.service_id, {}, proxy=proxy_url)

    healthy, checks, text = await run_doctor(path)

    assert not healthy
    outcome, detail = checks["proxy"]
    assert outcome == "FAIL"
    assert detail.endswith("Connection refused")
    assert "proxy CONNECT" not in checks
    assert WRONG_PASSWORD not in text


# --------------------------------------------------------------------------
# Targets


async def test_doctor_checks_a_tls_target_with_the_trustme_ca(
    hub: RunningHub,
    scim_tls_server: ScimTlsServer,
    ca_file: pathlib.Path,
    tls: TlsMaterial,
    tmp_path: pathlib.Path,
) -> None:
    target = {
        "addr": scim_tls_server.address,
        "server_name": scim_tls_server.server_name,
        "ca_file": str(ca_file),
        "pin_sha256": base64.b64encode(tls.spki_sha256()).decode(),
        "path_prefix": "/v2",
    }
    path = write_config(tmp_path, hub.url, hub.service_id, {"scim": target})

    healthy, checks, text = await run_doctor(path)

    assert healthy, text
    outcome, detail = checks["target scim TLS"]
    assert outcome == "ok"
    assert "verified" in detail
    assert "public key matches the pin" in detail
    assert checks["target scim SCIM"][0] == "ok"


async def test_doctor_fails_a_tls_target_it_cannot_verify(
    hub: RunningHub,
    scim_tls_server: ScimTlsServer,
    other_tls: TlsMaterial,
    tmp_path: pathlib.Path,
) -> None:
    other_ca = other_tls.write_ca_bundle(tmp_path / "other-ca.pem")
    target = {
        "addr": scim_tls_server.address,
        "ca_file": str(other_ca),
        "path_prefix": "/v2",
    }
    path = write_config(tmp_path, hub.url, hub.service_id, {"scim": target})

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    outcome, detail = checks["target scim TLS"]
    assert outcome == "FAIL"
    assert "certificate verification failed" in detail
    # Without server_name the certificate was checked for the declared host.
    assert "set server_name" in detail
    assert "target scim SCIM" not in checks


async def test_doctor_tls_flags_override_the_guess(
    hub: RunningHub,
    scim_tls_server: ScimTlsServer,
    tmp_path: pathlib.Path,
) -> None:
    # Port and settings say plain HTTP; --tls says otherwise, and the
    # system CAs do not know the test CA.
    target = {"addr": scim_tls_server.address, "path_prefix": "/v2"}
    path = write_config(tmp_path, hub.url, hub.service_id, {"scim": target})

    _, guessed, _ = await run_doctor(path)
    _, forced, _ = await run_doctor(path, tls=True)

    assert "target scim TLS" not in guessed
    assert forced["target scim TLS"][0] == "FAIL"


async def test_doctor_fails_an_unreachable_target(
    hub: RunningHub,
    scim_server: ScimServer,
    tmp_path: pathlib.Path,
    closed_port: int,
) -> None:
    port = closed_port
    targets = {
        "gone": {"addr": f"127.0.0.1:{port}"},
        "scim-server": {"addr": scim_server.address, "path_prefix": "/v2"},
    }
    path = write_config(tmp_path, hub.url, hub.service_id, targets)

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    assert checks["target gone TCP"] == (
        "FAIL",
        f"cannot connect to 127.0.0.1:{port}: Connection refused",
    )
    assert "target gone SCIM" not in checks
    # One target's failure does not stop the others' checks.
    assert checks["target scim-server SCIM"][0] == "ok"


async def test_doctor_fails_a_target_name_that_does_not_resolve(
    hub: RunningHub, tmp_path: pathlib.Path
) -> None:
    targets = {"nowhere": {"addr": "scim.nowhere.invalid:8080"}}
    path = write_config(tmp_path, hub.url, hub.service_id, targets)

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    outcome, detail = checks["target nowhere DNS"]
    assert outcome == "FAIL"
    assert detail.startswith("cannot resolve scim.nowhere.invalid: ")
    assert "target nowhere TCP" not in checks


async def start_http_server(nursery: trio.Nursery, status: int) -> int:
    """An HTTP server on 127.0.0.1 that answers every request with *status*."""

    async def answer(stream: trio.SocketStream) -> None:
        server = h11.Connection(h11.SERVER)
        while not isinstance(server.next_event(), h11.Request):
            server.receive_data(bytes(await stream.receive_some(65536)))
        headers = [("Content-Length", "0"), ("WWW-Authenticate", "Bearer")]
        data = server.send(h11.Response(status_code=status, headers=headers))
        await stream.send_all((data or b"") + (server.send(h11.EndOfMessage()) or b""))
        await stream.aclose()

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, answer, 0, host=LOOPBACK)
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.mark.parametrize("status", [401, 403])
async def test_doctor_warns_when_the_scim_server_wants_credentials(
    hub: RunningHub, nursery: trio.Nursery, tmp_path: pathlib.Path, status: int
) -> None:
    port = await start_http_server(nursery, status)
    target = {"addr": f"127.0.0.1:{port}", "path_prefix": "/scim/v2"}
    path = write_config(tmp_path, hub.url, hub.service_id, {"scim": target})

    healthy, checks, _ = await run_doctor(path)

    assert healthy
    outcome, detail = checks["target scim SCIM"]
    assert outcome == "warn"
    assert detail.startswith(f"GET /scim/v2/ServiceProviderConfig: {status}: ")
    assert "reachable, needs credentials" in detail


async def test_doctor_fails_discovery_on_the_wrong_path_and_says_what_to_try(
    hub: RunningHub, scim_server: ScimServer, tmp_path: pathlib.Path
) -> None:
    target = {"addr": scim_server.address, "path_prefix": "/scim/v2"}
    path = write_config(tmp_path, hub.url, hub.service_id, {"scim": target})

    healthy, checks, _ = await run_doctor(path)
    fixed, fixed_checks, _ = await run_doctor(path, scim_path="/v2")

    assert not healthy
    outcome, detail = checks["target scim SCIM"]
    assert outcome == "FAIL"
    assert detail.startswith("GET /scim/v2/ServiceProviderConfig: HTTP 404")
    assert "--scim-path" in detail
    assert fixed
    outcome, detail = fixed_checks["target scim SCIM"]
    assert outcome == "ok"
    assert detail.startswith("GET /v2/ServiceProviderConfig: 200")


async def test_doctor_fails_a_server_that_is_not_scim(
    hub: RunningHub, nursery: trio.Nursery, tmp_path: pathlib.Path
) -> None:
    port = await start_http_server(nursery, 500)
    path = write_config(
        tmp_path, hub.url, hub.service_id, {"app": {"addr": f"127.0.0.1:{port}"}}
    )

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    assert checks["target app SCIM"] == (
        "FAIL",
        "GET /ServiceProviderConfig: HTTP 500",
    )


async def test_doctor_bounds_each_check_by_its_timeout(
    hub: RunningHub, nursery: trio.Nursery, tmp_path: pathlib.Path
) -> None:
    # A target that accepts the connection and never answers.
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, silent, 0, host=LOOPBACK)
    )
    port = listeners[0].socket.getsockname()[1]
    path = write_config(
        tmp_path, hub.url, hub.service_id, {"mute": {"addr": f"127.0.0.1:{port}"}}
    )

    started = trio.current_time()
    healthy, checks, _ = await run_doctor(path, timeout=0.5)

    assert not healthy
    assert checks["target mute SCIM"] == (
        "FAIL",
        "no answer within 0.5 s to GET /ServiceProviderConfig",
    )
    assert trio.current_time() - started < 5


# --------------------------------------------------------------------------
# The configuration


async def test_doctor_reports_a_config_that_does_not_load(
    tmp_path: pathlib.Path,
) -> None:
    healthy, checks, text = await run_doctor(tmp_path / "missing.toml")

    assert not healthy
    outcome, detail = checks["config"]
    assert outcome == "FAIL"
    assert "no such config file" in detail
    assert len(text.splitlines()) == 2


async def test_doctor_fails_a_state_dir_open_to_others(
    hub: RunningHub, tmp_path: pathlib.Path
) -> None:
    path = write_config(tmp_path, hub.url, hub.service_id, {})
    (tmp_path / "run").mkdir(mode=0o700)
    os.chmod(tmp_path / "run", 0o750)  # noqa: S103 - what the check must refuse

    healthy, checks, _ = await run_doctor(path)

    assert not healthy
    outcome, detail = checks["state dir"]
    assert outcome == "FAIL"
    assert "chmod 700" in detail


async def test_doctor_fails_a_proxy_password_in_a_readable_file(
    hub: RunningHub, connect_proxy: ConnectProxy, tmp_path: pathlib.Path
) -> None:
    # The service_id lives in its own private file, so connect.toml may be
    # loaded while readable by others; but it holds the proxy's password.
    secret = tmp_path / "service_id"
    secret.write_text(hub.service_id + "\n")
    os.chmod(secret, 0o600)
    path = tmp_path / "connect.toml"
    path.write_text(
        f'service_id_file = "service_id"\nhub = "{hub.url}"\n'
        f'proxy = "{connect_proxy.url}"\n'
    )
    os.chmod(path, 0o644)

    healthy, checks, text = await run_doctor(path)

    assert not healthy
    outcome, detail = checks["secrets"]
    assert outcome == "FAIL"
    assert "holds the proxy password" in detail
    assert "chmod 600" in detail
    assert connect_proxy.password not in text
    # The rest still runs, and works.
    assert checks["hub handshake"][0] == "ok"


def test_doctor_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--timeout", "0"]) == 2
    assert main(["doctor", "--tls", "--no-tls"]) == 2
    assert main(["doctor", "--scim-path", "v2"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3
    assert all(line.startswith("trustelem-relay: error: ") for line in errors)
