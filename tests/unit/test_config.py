"""Settings precedence and validation: flags > environment > file > defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from controller import config


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return p.parse_args(list(argv))


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
