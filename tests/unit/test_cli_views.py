"""The CLI's tables: what a tenant typed reaches the operator's terminal as text, never as
control sequences."""

from __future__ import annotations

from controller.cli_views import ports_view


def test_names_in_the_ports_table_show_control_characters_escaped() -> None:
    ports = [
        {"id": "p1", "name": "vm1\x1b]0;owned\x07\nforged-row", "network_id": "n1",
         "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [{"ip_address": "10.0.0.5"}],
         "binding:host_id": "hv1", "status": "ACTIVE"},
    ]  # fmt: skip
    text = ports_view(ports, {"n1": "net\u202eevil"})
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert len(text.splitlines()) == 2  # the header and one row: no forged line
    assert "vm1\\x1b]0;owned\\x07\\x0aforged-row" in text
    assert "net\\u202eevil" in text
