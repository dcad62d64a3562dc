"""Settings precedence and validation: flags > environment > file > defaults."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import certifi
import pytest

from controller import config

CA_FILE = certifi.where()  # a CA bundle that loads, for settings that need one (nothing connects)


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return p.parse_args(list(argv))


def _private(path: Path, text: str) -> Path:
    """A secret file as an operator must write it (mode 0600: umask 022 would give 0644)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_defaults_are_loopback_only() -> None:
    s = config.load(_args(), environ={})
    assert s.api_listen == "127.0.0.1:9696" and s.ofp_listen == "127.0.0.1:6653"
    assert s.controller_target == "tcp:127.0.0.1:6653"
    assert s.database == "/var/lib/tenantnet/tenantnet.sqlite"


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text(
        '[tenantnet]\nunderlay_mtu = 9000\napi_listen = "0.0.0.0:1"\nlog_level = "DEBUG"\n'
    )
    env = {"TENANTNET_API_LISTEN": "127.0.0.1:2", "TENANTNET_UNDERLAY_MTU": "1600"}
    s = config.load(_args("--config", str(f), "--underlay-mtu", "1700"), environ=env)
    assert s.underlay_mtu == 1700  # flag
    assert s.api_listen == "127.0.0.1:2"  # env over file
    assert s.log_level == "DEBUG"  # file over default


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (("--api-listen", "nohostport"), "api_listen"),
        (("--ofp-listen", "1.2.3.4:99999"), "ofp_listen"),
        (("--underlay-mtu", "abc"), "underlay_mtu"),
        (("--underlay-mtu", "100"), "underlay_mtu"),
        (("--advertise", "1.2.3.4:6653"), "advertise"),
        (("--basic-user", "u"), "basic_password"),
        (("--ofp-dead-after-s", "0"), "ofp_dead_after_s"),
        (("--ofp-dead-after-s", "1", "--ofp-echo-interval-s", "2"), "ofp_dead_after_s"),
        (("--ofp-barrier-timeout-s", "-1"), "ofp_barrier_timeout_s"),
        (("--ofp-max-connections-per-source", "0"), "ofp_max_connections_per_source"),
    ],
)
def test_bad_values_name_the_setting(argv: tuple[str, ...], word: str) -> None:
    with pytest.raises(config.ConfigError, match=word):
        config.load(_args(*argv), environ={})


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text("api_lisen = '127.0.0.1:1'\n")
    with pytest.raises(config.ConfigError, match="api_lisen"):
        config.load(_args("--config", str(f)), environ={})


# -- strictness: every mistake that used to start a less protected controller is an error ----


def test_keys_beside_the_tenantnet_table_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text('auth_token = "s3cret"\n[tenantnet]\napi_listen = "127.0.0.1:1"\n')
    with pytest.raises(config.ConfigError, match=r"auth_token.*outside the \[tenantnet\] table"):
        config.load(_args("--config", str(f)), environ={})
    f.write_text('[tenantnet]\napi_listen = "127.0.0.1:1"\n[other]\nx = 1\n')
    with pytest.raises(config.ConfigError, match="other"):
        config.load(_args("--config", str(f)), environ={})


def test_file_values_must_have_the_right_type(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    for line, word in (
        ('underlay_mtu = "9000"', "underlay_mtu"),
        ("auth_token = 1234", "auth_token"),
        ("startup_grace_s = nan", "startup_grace_s"),
        ("wait_max_ports = true", "wait_max_ports"),
    ):
        f.write_text(line + "\n")
        with pytest.raises(config.ConfigError, match=word):
            config.load(_args("--config", str(f)), environ={})


@pytest.mark.parametrize(
    ("argv", "env", "word"),
    [
        (("--auth-token", ""), {}, "auth_token .flag. is empty"),
        ((), {"TENANTNET_AUTH_TOKEN": ""}, "auth_token .environment. is empty"),
        (("--auth-token", "  "), {}, "empty"),
        (("--basic-user", "u", "--basic-password", ""), {}, "basic_password .flag. is empty"),
        (("--basic-user", "", "--basic-password", "p"), {}, "basic_user"),
        (("--api-listen", "127.0.0.1:6653"), {}, "api_listen and ofp_listen"),
        (("--api-listen", "0.0.0.0:6653"), {}, "api_listen and ofp_listen"),
        (("--public-url", "ftp://x"), {}, "public_url"),
        (("--public-url", "http://h/v?x=1"), {}, "public_url"),
        (("--wait-max-ports", "0"), {}, "wait_max_ports"),
        (("--api-header-timeout-s", "0"), {}, "api_header_timeout_s"),
        (("--api-max-connections", "\u00b2"), {}, "api_max_connections"),
        (("--api-listen", "127.0.0.1:\u00b2"), {}, "api_listen"),
    ],
)
def test_empty_secrets_and_contradictions_are_errors(
    argv: tuple[str, ...], env: dict[str, str], word: str
) -> None:
    with pytest.raises(config.ConfigError, match=word):
        config.load(_args(*argv), environ=env)


def test_secrets_come_from_files_or_the_environment(tmp_path: Path) -> None:
    token = _private(tmp_path / "token", "s3cret\n")
    password = _private(tmp_path / "password", "pw\r\n")
    s = config.load(
        _args("--auth-token-file", str(token), "--basic-user", "cs"),
        environ={"TENANTNET_BASIC_PASSWORD_FILE": str(password)},
    )
    assert (s.auth_token, s.basic_user, s.basic_password) == ("s3cret", "cs", "pw")
    assert s.auth_mode == "token+basic"
    assert config.load(_args(), environ={"TENANTNET_AUTH_TOKEN": "e"}).auth_token == "e"
    assert config.load(_args(), environ={}).auth_mode == "none"


def test_secret_files_must_exist_hold_something_and_not_double_a_value(tmp_path: Path) -> None:
    empty = _private(tmp_path / "empty", "\n")
    with pytest.raises(config.ConfigError, match=r"auth_token_file.*empty"):
        config.load(_args("--auth-token-file", str(empty)), environ={})
    with pytest.raises(config.ConfigError, match=r"auth_token_file.*cannot read"):
        config.load(_args("--auth-token-file", str(tmp_path / "missing")), environ={})
    token = _private(tmp_path / "token", "t")
    with pytest.raises(config.ConfigError, match="auth_token is given twice"):
        config.load(
            _args("--auth-token-file", str(token)), environ={"TENANTNET_AUTH_TOKEN": "other"}
        )


def test_secret_flags_are_named_for_the_ps_warning() -> None:
    args = _args("--auth-token", "t", "--basic-user", "u", "--basic-password", "p")
    assert config.secrets_on_command_line(args) == ["--auth-token", "--basic-password"]
    assert config.secrets_on_command_line(_args("--auth-token-file", "/x")) == []


def test_quota_defaults_from_flags_environment_and_file(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text("[tenantnet]\nquota_network = 7\nquota_subnet = -1\n")
    env = {"TENANTNET_QUOTA_PORT": "42", "TENANTNET_QUOTA_NETWORK": "8"}
    s = config.load(_args("--config", str(f), "--quota-router", "3"), environ=env)
    assert s.quota_defaults == {
        "network": 8,
        "subnet": -1,
        "port": 42,
        "security_group": 10,
        "security_group_rule": 100,
        "router": 3,
    }
    assert config.load(_args(), environ={}).quota_defaults["port"] == 500  # Neutron's


@pytest.mark.parametrize("value", ["-2", "2147483648", "ten", "1.5"])
def test_bad_quota_defaults_name_the_setting(value: str) -> None:
    with pytest.raises(config.ConfigError, match="quota_port"):
        config.load(_args("--quota-port", value), environ={})


def test_dhcp_settings(tmp_path: Path) -> None:
    s = config.load(
        _args("--dhcp-dns-servers", "192.0.2.1, 192.0.2.2", "--dhcp-lease-time-s", "600"),
        environ={"TENANTNET_DHCP_DOMAIN_NAME": "cloud.example"},
    )
    assert s.dhcp.dns_servers == ("192.0.2.1", "192.0.2.2") and s.dhcp.lease_time == 600
    assert s.dhcp.domain_name == "cloud.example" and s.dhcp.server_mac == "02:7e:4e:00:00:01"
    assert config.load(_args(), environ={}).dhcp.dns_servers == ()
    guard = config.load(_args("--dhcp-port-max-pps", "5", "--dhcp-ban-s", "3"), environ={})
    assert (guard.dhcp_guard.max_pps, guard.dhcp_guard.ban_s, guard.dhcp_guard.max_ban_s) == (
        5, 3, 320)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (("--dhcp-lease-time-s", "10"), "dhcp_lease_time_s"),
        (("--dhcp-dns-servers", "192.0.2.1,nope"), "dhcp_dns_servers"),
        (("--dhcp-dns-servers", "2001:db8::1"), "dhcp_dns_servers"),
        (("--dhcp-domain-name", "bad name"), "dhcp_domain_name"),
        (("--dhcp-server-mac", "01:00:5e:00:00:01"), "dhcp_server_mac"),
        (("--dhcp-server-mac", "zz"), "dhcp_server_mac"),
        (("--packet-in-rate-pps", "0"), "packet_in_rate_pps"),
        (("--dhcp-port-max-pps", "0"), "dhcp_port_max_pps"),
        (("--dhcp-ban-s", "0"), "dhcp_ban_s"),
        (("--dhcp-ban-s", "60", "--dhcp-ban-max-s", "30"), "dhcp_ban_max_s"),
        (("--dhcp-ban-max-s", "70000"), "dhcp_ban_max_s"),  # a 16-bit hard timeout
    ],
)
def test_bad_dhcp_settings_name_the_setting(argv: tuple[str, ...], word: str) -> None:
    with pytest.raises(config.ConfigError, match=word):
        config.load(_args(*argv), environ={})


def test_store_is_sqlite_by_default_and_etcd_when_named(tmp_path: Path) -> None:
    s = config.load(_args("--state-dir", str(tmp_path)), environ={})
    assert s.etcd is None and s.database == str(tmp_path / "tenantnet.sqlite")
    s = config.load(
        _args("--state-dir", str(tmp_path), "--store", "etcd://10.0.0.1:2379,[fd00::2]:2379"),
        environ={"TENANTNET_ETCD_TIMEOUT_S": "3.5", "TENANTNET_ETCD_SNAPSHOT_EVERY": "500"},
    )
    assert s.etcd is not None
    assert s.etcd.endpoints == (("10.0.0.1", 2379), ("fd00::2", 2379))
    assert s.etcd.timeout_s == 3.5 and s.etcd.protocol == "http"
    assert s.etcd.attempt_timeout_s == 0.5  # each member first with this, then with timeout_s
    assert s.etcd.snapshot_every == 500 and s.etcd.log_margin == 200
    assert s.database == str(tmp_path / "etcd-replica.sqlite")  # a replica, not the single file


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("--store", "postgres://x"), "store"),
        (("--store", "etcd://host"), "store"),
        (("--store", "etcd://h:1", "--etcd-timeout-s", "0"), "etcd_timeout_s"),
        (("--store", "etcd://h:1", "--etcd-attempt-timeout-s", "0"), "etcd_attempt_timeout_s"),
        (("--store", "etcd://h:1", "--etcd-call-timeout-s", "0"), "etcd_call_timeout_s"),
        (("--store", "etcd://h:1", "--etcd-prefix", "/"), "etcd_prefix"),
        (("--store", "etcd://h:1", "--etcd-tls-cert", "/nonexistent"), "etcd_tls_cert"),
        (("--etcd-tls-ca", "/etc/hostname"), "etcd_tls"),
    ],
)
def test_bad_store_settings_are_named(argv: tuple[str, ...], named: str) -> None:
    with pytest.raises(config.ConfigError, match=named):
        config.load(_args(*argv), environ={})


@pytest.mark.parametrize(
    ("name", "value"), [("ETCD_SNAPSHOT_EVERY", "9"), ("ETCD_LOG_MARGIN", "0")]
)
def test_bad_snapshot_settings_are_named(name: str, value: str) -> None:
    with pytest.raises(config.ConfigError, match=name.lower()):
        config.load(_args("--store", "etcd://h:1"), environ={"TENANTNET_" + name: value})


SECRET = "pw-\u00e9t\u00e9-1234"
ETCD = ("--store", "etcd://127.0.0.1:1", "--etcd-user", "tn")


def _etcd_password(path: Path) -> str:
    # any CA file passes here (nothing connects)
    s = config.load(
        _args(*ETCD, "--etcd-tls-ca", CA_FILE, "--etcd-password-file", str(path)),
        environ={},
    )
    assert s.etcd is not None
    return s.etcd.password


def _secret(setting: str, path: Path) -> str:
    """The secret ``{setting}_file`` names, loaded as the controller loads it."""
    if setting == "etcd_password":
        return _etcd_password(path)
    if setting == "basic_password":
        return config.load(_args("--basic-user", "u", "--basic-password-file", str(path)),
                           environ={}).basic_password  # fmt: skip
    return config.load(_args("--auth-token-file", str(path)), environ={}).auth_token


SECRET_SETTINGS = ("auth_token", "basic_password", "etcd_password")


@pytest.mark.parametrize("setting", SECRET_SETTINGS)
@pytest.mark.parametrize("mode", [0o602, 0o620, 0o604, 0o644], ids=oct)
def test_a_secret_file_others_can_write_or_read_is_refused(
    tmp_path: Path, setting: str, mode: int
) -> None:
    """Every secret file, not only etcd_password_file: world-readable, group- or
    world-writable (another user could put their own token in) is refused, naming the setting,
    the file and the fix (old code: auth_token_file and basic_password_file unchecked)."""
    path = _private(tmp_path / "secret", SECRET + "\n")
    assert _secret(setting, path) == SECRET
    path.chmod(0o640)  # group-readable: a group of the operator's choosing, accepted
    assert _secret(setting, path) == SECRET
    path.chmod(mode)
    with pytest.raises(config.ConfigError) as refused:
        _secret(setting, path)
    message = str(refused.value)
    assert message.startswith(f"{setting}_file: {path} is readable or writable by other users")
    assert f"chmod 600 {path}" in message and SECRET not in message


@pytest.mark.parametrize("setting", SECRET_SETTINGS)
def test_a_secret_file_of_another_user_is_refused_without_a_chown_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """Read by a user that is not root (uid 1000: the euid seen by `read_secret`), a file of
    another user (nobody) is refused, with no ``chown`` hint: following it would take the
    file away from the service that owns it (old code: "chown 1000 <path>")."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = _private(tmp_path / "secret", SECRET)
    os.chown(path, 65534, 65534)  # nobody
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    with pytest.raises(config.ConfigError) as refused:
        _secret(setting, path)
    message = str(refused.value)
    assert message.startswith(f"{setting}_file: {path} belongs to another user (uid 65534)")
    assert "chown" not in message and SECRET not in message


@pytest.mark.parametrize("setting", SECRET_SETTINGS)
def test_root_reads_a_private_secret_file_of_any_owner(tmp_path: Path, setting: str) -> None:
    """``sudo tenantnet status`` with the service user's token file (0600, owned by it: here
    nobody) works (old code: refused, "chown 0 <path>", which breaks the service); the mode
    rule still holds for root."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = _private(tmp_path / "secret", SECRET + "\n")
    os.chown(path, 65534, 65534)  # nobody
    assert _secret(setting, path) == SECRET
    path.chmod(0o644)
    with pytest.raises(config.ConfigError, match=rf"{setting}_file: .* by other users"):
        _secret(setting, path)


def test_a_symlink_to_a_private_secret_file_is_followed(tmp_path: Path) -> None:
    """Kubernetes mounts a secret as a link (``token -> ..data/token``): the file it names is
    checked and read; a link to a world-readable file is refused all the same."""
    target = _private(tmp_path / "target", SECRET)
    link = tmp_path / "token"
    link.symlink_to(target)
    for setting in SECRET_SETTINGS:
        assert _secret(setting, link) == SECRET
    target.chmod(0o644)
    with pytest.raises(config.ConfigError, match=r"auth_token_file: .* by other users"):
        _secret("auth_token", link)


def test_a_terminal_named_as_a_secret_file_does_not_become_the_controlling_terminal() -> None:
    """A terminal is opened before the fstat finds it is not a regular file: without O_NOCTTY
    a session leader with no terminal would make it its controlling terminal (old code).  Run
    in a new session (a subprocess) on a pseudo-terminal of its own."""
    import subprocess
    import sys

    script = (
        "import os\n"
        "from controller import config\n"
        "master, slave = os.openpty()\n"
        "try:\n"
        "    config.read_secret('auth_token', os.ttyname(slave))\n"
        "except config.ConfigError as exc:\n"
        "    print(exc)\n"
        "try:\n"
        "    os.close(os.open('/dev/tty', os.O_RDONLY))\n"
        "    print('controlling terminal')\n"
        "except OSError:\n"
        "    print('no controlling terminal')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        start_new_session=True, check=True,
    ).stdout  # fmt: skip
    assert "not a regular file" in out
    assert out.splitlines()[-1] == "no controlling terminal"


@pytest.mark.parametrize("setting", SECRET_SETTINGS)
def test_a_secret_file_is_checked_and_read_as_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """The file checked is the file read: a path check (os.stat) that saw a private file
    while the open got a world-readable one (swapped meanwhile) must not pass."""
    import os

    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o644)
    real_stat = os.stat
    private = os.stat_result((0o100600, *real_stat(path)[1:]))
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: private if str(p) == str(path)
                        else real_stat(p, *a, **k))  # fmt: skip
    with pytest.raises(config.ConfigError, match=rf"{setting}_file: .* by other users"):
        _secret(setting, path)


def test_a_secret_that_is_not_a_regular_file_or_too_long_is_refused(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(config.ConfigError, match=r"auth_token_file: .* not a regular file"):
        _secret("auth_token", fifo)  # and no wait for a writer that never comes
    big = _private(tmp_path / "big", "x" * (64 * 1024 + 1))
    with pytest.raises(config.ConfigError, match=r"auth_token_file: .* over 64 KiB"):
        _secret("auth_token", big)


def test_the_etcd_password_file_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked by `validate` and used by `Settings.etcd`, the file is read once (old code:
    twice, and any later `.etcd` read it again)."""
    path = _private(tmp_path / "pw", SECRET)
    reads: list[str] = []
    real = config.read_secret
    monkeypatch.setattr(config, "read_secret", lambda n, p: reads.append(n) or real(n, p))
    s = config.load(
        _args(*ETCD, "--etcd-tls-ca", CA_FILE, "--etcd-password-file", str(path)),
        environ={},
    )
    path.write_text("changed")
    assert s.etcd is not None and s.etcd.password == SECRET
    assert s.etcd.password == SECRET
    assert reads == ["etcd_password"]


def test_a_secret_file_that_is_not_utf8_is_refused_without_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"s3cr\xe9t-\xff")
    path.chmod(0o600)
    with pytest.raises(config.ConfigError) as bad:
        _etcd_password(path)
    assert "is not UTF-8" in str(bad.value)
    assert "xe9" not in str(bad.value) and "xff" not in str(bad.value)
    assert "position" not in str(bad.value)
    with pytest.raises(config.ConfigError) as token:
        config.load(_args(), environ={"TENANTNET_AUTH_TOKEN_FILE": str(path)})
    assert "is not UTF-8" in str(token.value) and "xe9" not in str(token.value)


def test_an_etcd_user_without_etcd_tls_is_refused_naming_etcd_tls_ca(tmp_path: Path) -> None:
    """The password (authenticate) and the token (every call) would cross the management
    network in clear text: the controller and store-copy refuse to start, naming
    etcd_tls_ca, never the password (before: an INSECURE warning, and it ran)."""
    from controller.cli import main

    path = _private(tmp_path / "pw", SECRET)
    argv = (*ETCD, "--etcd-password-file", str(path))
    with pytest.raises(config.ConfigError) as refused:
        config.load(_args(*argv), environ={})
    assert "etcd_tls_ca" in str(refused.value) and SECRET not in str(refused.value)
    assert str(refused.value).startswith("etcd_user 'tn' needs etcd TLS")
    with_tls = config.load(_args(*argv, "--etcd-tls-ca", CA_FILE), environ={})
    assert with_tls.etcd is not None and with_tls.etcd.protocol == "https"
    assert config.load(_args("--store", "etcd://127.0.0.1:1"), environ={}).etcd is not None
    assert main(["store-copy", str(tmp_path / "x.db"), "etcd://127.0.0.1:1",
                 "--etcd-user", "tn", "--etcd-password-file", str(path)]) == 1  # fmt: skip


# -- values that used to be accepted and then broke the controller later ----------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # a typo'd level used to mean INFO, silently; BASIC_FORMAT a traceback at start
        (("--log-level", "DEBG"), "^log_level: expected one of DEBUG, INFO"),
        (("--log-level", "basic_format"), "^log_level"),
        # os-ken binds ofp_listen on a thread of its own: a name that does not resolve only
        # logged an error there, and the controller ran without an OpenFlow listener
        (("--ofp-listen", "ctl.example.invalid:6653"), "^ofp_listen: expected IP:PORT"),
        (("--ofp-listen", "999.1.2.3:6653"), "^ofp_listen"),
        # tcp:0.0.0.0:6653 was written into every switch's Controller row
        (("--ofp-listen", "0.0.0.0:6653"), "^ofp_listen: .*give advertise"),
        (("--ofp-listen", "[::]:6653"), "^ofp_listen: .*give advertise"),
        # written into every switch's Controller row as they were: no switch could connect
        (("--advertise", "tcp:garbage"), "^advertise: expected tcp:IP:PORT"),
        (("--advertise", "tcp:192.0.2.10"), "^advertise"),
        (("--advertise", "ssl:192.0.2.10:99999"), "^advertise"),
        (("--advertise", "tcp:2001:db8::1:6653"), "^advertise"),  # IPv6 needs brackets
        (("--advertise", "unix:"), "^advertise"),
        # an echo request per wake-up (a busy loop per switch), or every switch, batch and
        # API client timed out on a healthy network
        (("--ofp-echo-interval-s", "1e-9"), "^ofp_echo_interval_s: .* outside \\[0.1, 3600\\]"),
        (("--ofp-handshake-timeout-s", "0.001"), "^ofp_handshake_timeout_s"),
        (("--ofp-barrier-timeout-s", "0.001"), "^ofp_barrier_timeout_s"),
        (("--api-header-timeout-s", "1e-6"), "^api_header_timeout_s"),
        (("--startup-grace-s", "0.01"), "^startup_grace_s"),
        # an EUI-64 passed, then failed in the middle of the start (IndexError, no setting named)
        (("--dhcp-server-mac", "00-1B-77-FF-FE-49-54-FD"), "^dhcp_server_mac: .* not a 48-bit"),
        (("--dhcp-server-mac", "00:00:00:00:00:00"), "^dhcp_server_mac: .* all-zero"),
        (("--dhcp-dns-servers", "192.0.2.1,0.0.0.0"), "^dhcp_dns_servers: 0.0.0.0"),
        (("--dhcp-dns-servers", "255.255.255.255"), "^dhcp_dns_servers"),
        (("--dhcp-dns-servers", "224.0.0.251"), "^dhcp_dns_servers"),
        # endpoints that parsed and then failed at the first call, as if the cluster were down
        (("--store", "etcd://http://10.0.0.1:2379"), "^store: .*http://10.0.0.1:2379"),
        (("--store", "etcd://etcd 1:2379"), "^store"),
        (("--store", "etcd://[fd00::1:2379"), "^store"),
        (("--store", "etcd://10.0.0.1:2379,10.0.0.1:2379"), "^store: .*given twice"),
        (
            ("--store", "etcd://10.0.0.1:2379", "--etcd-tls-ca", "/etc/hostname"),
            "^etcd_tls_ca: /etc/hostname unusable",
        ),
    ],
)
def test_values_that_broke_the_controller_later_are_refused_at_start(
    argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.load(_args(*argv), environ={})


def test_good_addresses_levels_and_endpoints_still_load() -> None:
    """What the checks above must keep accepting, and the IPv6 controller target OVS reads."""
    ok = {
        ("--log-level", "debug"): ("log_level", "debug"),
        ("--log-level", "WARN"): ("log_level", "WARN"),
        ("--ofp-listen", "0.0.0.0:6653", "--advertise", "tcp:192.0.2.10:6653"): (
            "controller_target", "tcp:192.0.2.10:6653"),
        ("--advertise", "unix:/run/tenantnet/ofp.sock"): (
            "controller_target", "unix:/run/tenantnet/ofp.sock"),
        ("--advertise", "tcp:[2001:db8::10]:6653"): (  # ssl: needs ofp_tls_* (below)
            "controller_target", "tcp:[2001:db8::10]:6653"),
        # the derived target of an IPv6 listener is bracketed (was tcp:2001:db8::10:6653)
        ("--ofp-listen", "[2001:db8::10]:6653"): (
            "controller_target", "tcp:[2001:db8::10]:6653"),
        ("--ofp-echo-interval-s", "0.1", "--ofp-dead-after-s", "0.3"): (
            "ofp_echo_interval_s", 0.1),
        ("--dhcp-server-mac", "fa-16-3e-00-00-01"): ("dhcp_server_mac", "fa-16-3e-00-00-01"),
    }  # fmt: skip
    for argv, (name, value) in ok.items():
        assert getattr(config.load(_args(*argv), environ={}), name) == value, argv
    etcd = config.load(
        _args("--store", "etcd://etcd-1.example.org:2379,10.0.0.2:2379,[fd00::3]:2379"),
        environ={},
    ).etcd
    assert etcd is not None
    assert etcd.endpoints == (("etcd-1.example.org", 2379), ("10.0.0.2", 2379), ("fd00::3", 2379))


def test_a_nul_character_in_a_file_value_is_refused_naming_the_setting(tmp_path: Path) -> None:
    """Old code: ``ValueError: embedded null byte`` from os.access, a traceback at start."""
    f = tmp_path / "t.toml"
    f.write_text('[tenantnet]\nofp_tls_key = "a\\u0000b"\nofp_tls_cert = "c"\nofp_tls_ca = "d"\n')
    with pytest.raises(config.ConfigError, match=r"^ofp_tls_key \(config file .*NUL"):
        config.load(_args("--config", str(f)), environ={})


def test_serve_with_a_bad_value_exits_2_with_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tenantnet serve`` with a bad setting: exit code 2, one line on stderr naming the
    setting, nothing else (argparse's error printed its usage line first)."""
    from controller import cli

    monkeypatch.setattr(cli, "serve", lambda settings: 0)  # never start a controller here
    assert cli.main(["serve", "--log-level", "DEBG"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "tenantnet serve: error: log_level: expected one of DEBUG, INFO, WARNING, ERROR, "
        "CRITICAL, got 'DEBG'"
    ]


def test_a_secret_of_the_wrong_type_is_not_printed(tmp_path: Path) -> None:
    """``auth_token = 918273645546372819`` (a number) failed with the number in the message,
    on stderr and in the journal (found by a review)."""
    f = tmp_path / "t.toml"
    f.write_text("auth_token = 918273645546372819\n")
    f.chmod(0o600)
    with pytest.raises(config.ConfigError, match="auth_token") as err:
        config.load(_args("--config", str(f)), environ={})
    assert "918273645546372819" not in str(err.value)


def test_a_config_file_holding_a_secret_should_be_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A world-readable config file holding auth_token was taken in silence (found by a
    review); it is warned about (refusing it would stop controllers that start today)."""
    f = tmp_path / "t.toml"
    f.write_text('auth_token = "s3cret"\n')
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="controller.config"):
        assert config.load(_args("--config", str(f)), environ={}).auth_token == "s3cret"
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "not private" in line and "auth_token_file" in line and "s3cret" not in line
    caplog.clear()
    f.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="controller.config"):
        config.load(_args("--config", str(f)), environ={})
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_an_ssl_advertise_needs_the_openflow_tls_files() -> None:
    """``advertise = ssl:...`` with a plain-TCP listener: every switch was told to use TLS
    and none could ever connect, with no start-up error (found by a review)."""
    with pytest.raises(config.ConfigError, match=r"advertise.*plain"):
        config.load(_args("--advertise", "ssl:192.0.2.10:6653"), environ={})
    assert config.load(_args("--advertise", "tcp:192.0.2.10:6653"), environ={}).advertise
