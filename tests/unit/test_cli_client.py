"""`tenantnet status`, `hosts` and `ports` against the real HTTP server (uvicorn over a real
store): the tables show what the API holds, and every failure - connection refused, 401, 404,
a bad setting - is one line on stderr and exit code 1; `status` of a controller that is not
ready shows its table and exits 2 with the reason in one line."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import apiclient, cli
from controller.api import ApiSettings, create_app
from controller.store import Store
from tests.unit.conftest import live_server

TOKEN = "cli-s3cret"

STATUS: dict[str, Any] = {
    "hosts": {
        "hv1": {"ovsdb": True, "openflow": True, "ready": True, "flows": 42, "groups": 6,
                "networks": [1, 2], "degraded": None},
        "hv2": {"ovsdb": True, "openflow": False, "ready": False, "flows": None,
                "groups": None, "networks": [], "degraded": None},
    },
    "flow_mods": 120, "group_mods": 9, "batches": 7, "binding_conflicts": 0,
    "reconciled_after_s": None, "uptime_s": 12.5,
}  # fmt: skip


@pytest.fixture
def api(store: Store, tmp_path: Path) -> Iterator[str]:
    """A served API with a token, two hosts, a network and three ports (one per host, one
    unbound); the status document is `STATUS` (hv2 not read back: /readyz is 503)."""
    store.create_host({"id": "hv1", "tunnel_ip": "10.9.0.1", "ovsdb": "tcp:10.8.0.1:6640"})
    store.create_host({"id": "hv2", "tunnel_ip": "10.9.0.2", "ovsdb": "tcp:10.8.0.2:6640"})
    net = store.create_network({"name": "web", "provider:network_type": "vxlan"})
    store.create_subnet({"network_id": net["id"], "cidr": "10.7.0.0/24", "ip_version": 4})
    for name, host in (("vm1", "hv1"), ("vm2", "hv2"), ("spare", None)):
        body: dict[str, Any] = {"network_id": net["id"], "name": name}
        if host:
            body["binding:host_id"] = host
        store.create_port(body)
    app = create_app(store, ApiSettings(auth_token=TOKEN), status=lambda: STATUS)
    app.add_api_route("/tenantnet/status", lambda: STATUS, methods=["GET"])
    with live_server(app) as (port, _):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)  # a secret file others can read is refused (`config.read_secret`)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_hosts_prints_a_table_with_flow_counts(
    api: str, token_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "hosts", "--url", api, "--auth-token-file", token_file)
    assert code == 0, err
    header, hv1, hv2 = out.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "TUNNEL"]
    assert hv1.split()[:3] == ["hv1", "disconnected", "10.9.0.1"] and " 42 " in hv1
    assert hv2.startswith("hv2 ")


def test_ports_lists_all_or_one_hosts_ports(
    api: str, token_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ports", "--url", api, "--auth-token-file", token_file)
    assert code == 0
    rows = out.splitlines()[1:]
    assert sorted(r.split()[1] for r in rows) == ["spare", "vm1", "vm2"]
    assert all(" web " in r for r in rows)  # the network's name, not its id
    code, out, _ = run(capsys, "ports", "--url", api, "--auth-token-file", token_file,
                       "--host", "hv2")  # fmt: skip
    assert code == 0
    (row,) = out.splitlines()[1:]
    assert row.split()[1] == "vm2" and " hv2 " in row


def test_status_shows_hosts_and_why_the_controller_is_not_ready(
    api: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANTNET_URL", api)
    monkeypatch.setenv("TENANTNET_AUTH_TOKEN", TOKEN)
    code, out, err = run(capsys, "status")
    assert code == cli.NOT_READY_EXIT == 2
    assert err == (
        "tenantnet status: controller not ready: hosts not reconciled yet: hv2 (syncing)\n"
    )
    lines = out.splitlines()
    assert lines[0] == "controller: not ready (hosts not reconciled yet: hv2 (syncing))"
    assert lines[2].split()[:2] == ["hv1", "connected"] and "42" in lines[2].split()
    assert lines[3].split()[:2] == ["hv2", "syncing"]
    assert lines[-1].startswith("flow-mods 120, group-mods 9, batches 7")


def test_status_of_a_ready_controller_exits_0(
    api: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(STATUS["hosts"]["hv2"], "ready", True)
    code, out, err = run(capsys, "status", "--url", api, "--auth-token", TOKEN)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "controller: ready"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["hosts"], "401 Unauthorized: Authentication required"),
        (["hosts", "--auth-token", "wrong"], "401 Unauthorized"),
        (["ports", "--host", "hv9"], "404 Not Found"),
    ],
)
def test_http_errors_are_one_line_and_exit_1(
    api: str, token_file: str, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    if "--auth-token" not in argv and argv[0] == "ports":
        argv = [*argv, "--auth-token-file", token_file]
    code, out, err = run(capsys, *argv, "--url", api)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and expected in err, err
    assert err.startswith(f"tenantnet {argv[0]}: ")


def test_connection_refused_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code, out, err = run(capsys, "status", "--url", url)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"cannot connect to {url}" in err and "refused" in err


def test_https_without_the_ca_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["status", "--url", "https://127.0.0.1:9", "--ca-file", "/nonexistent"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.count("\n") == 1 and "TLS files" in err


# ------------------------------------------------------------------ where the settings come from


def _args(**flags: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    apiclient.add_arguments(parser)
    argv = [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return parser.parse_args(argv)


def test_the_servers_config_file_is_enough(tmp_path: Path, token_file: str) -> None:
    cfg = tmp_path / "tenantnet.toml"
    cfg.write_text(f'[tenantnet]\napi_listen = "0.0.0.0:9797"\nauth_token_file = "{token_file}"\n')
    target = apiclient.resolve(_args(config=cfg), {})
    assert target.url == "http://127.0.0.1:9797" and target.token == TOKEN
    cfg.write_text('api_listen = "[::]:443"\napi_tls_key = "/k"\nbasic_user = "u"\n'
                   'basic_password = "p"\n')  # fmt: skip
    target = apiclient.resolve(_args(config=cfg), {})
    assert target.url == "https://[::1]:443" and target.basic == ("u", "p")


def test_a_token_file_others_can_read_is_refused_as_the_server_refuses_it(
    token_file: str,
) -> None:
    Path(token_file).chmod(0o644)
    with pytest.raises(apiclient.CliError, match=rf"auth_token_file: .* chmod 600 {token_file}"):
        apiclient.resolve(_args(auth_token_file=token_file), {})


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "tenantnet.toml"
    cfg.write_text('public_url = "http://file:1"\nauth_token = "from-file"\n')
    env = {"TENANTNET_CONFIG": str(cfg)}
    assert apiclient.resolve(_args(), env).url == "http://file:1"
    env |= {"TENANTNET_URL": "http://env:2", "TENANTNET_AUTH_TOKEN": "from-env"}
    target = apiclient.resolve(_args(), env)
    assert (target.url, target.token) == ("http://env:2", "from-env")
    target = apiclient.resolve(_args(url="http://flag:3", auth_token="from-flag"), env)
    assert (target.url, target.token) == ("http://flag:3", "from-flag")


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"auth_token": "a", "auth_token_file": "/x"}, {}, "auth_token is given twice"),
        ({}, {"TENANTNET_AUTH_TOKEN": " "}, "auth_token is empty"),
        ({"basic_user": "u"}, {}, "basic_user needs basic_password_file"),
        ({"url": "ftp://x"}, {}, "url: expected http(s)"),
        ({"cert_file": "/c"}, {}, "cert_file and key_file go together"),
        ({"auth_token_file": "/nonexistent/token"}, {}, "auth_token_file: cannot read"),
    ],
)
def test_bad_settings_are_named(flags: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(apiclient.CliError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apiclient.resolve(_args(**flags), env)
