"""``POST /tenantnet/trace`` and ``tenantnet trace`` on a running controller with three real
hypervisors: the tenant-terms path of an allowed and of a dropped packet, the errors that name
the field, and drift: a flow deleted behind the controller's back shows up as a different
answer in ``installed`` mode only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller import cli
from lab.tenantnet_proc import ApiError
from tests.integration import dataplane_fixtures
from tests.integration.dataplane_fixtures import DataplaneEnv, Tenancy

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env


@pytest.fixture(scope="module")
def pair(dp_env: DataplaneEnv) -> Iterator[tuple[Tenancy, dict, dict]]:
    t = Tenancy(dp_env, "tapi")
    net = t.network(seg_id=4711)
    p1 = t.port(net, ip="10.0.0.5", name="vm1")
    p2 = t.port(net, ip="10.0.0.6", name="vm2")
    t.vm(1, "tapi1", net, port=p1)
    t.vm(2, "tapi2", net, port=p2)
    t.wait_active([p1, p2])
    yield t, p1, p2


def trace(env: DataplaneEnv, expect: int | None = None, **body: object) -> dict:
    return env.api.request("POST", "/tenantnet/trace", body, expect=expect)


def show(answer: dict) -> None:
    print(f"\n{answer['packet']}: {answer['verdict']}")
    for path in answer["paths"]:
        print("\n".join(f"  {s}" for s in path["steps"]))


def test_allowed_and_dropped_packets_in_tenant_terms(dp_env: DataplaneEnv, pair) -> None:
    _, p1, p2 = pair
    ok = trace(dp_env, source_port_id=p1["id"], destination_ip="10.0.0.6", protocol="tcp",
               destination_l4_port=22)["trace"]  # fmt: skip
    show(ok)
    assert ok["verdict"] == "delivered" and ok["delivered_to"] == [p2["id"]]
    steps = ok["paths"][0]["steps"]
    hv2_ip = dp_env.hvs[1].tunnel_ip
    assert steps[0] == "port vm1 (10.0.0.5) on hv1 sends tcp 10.0.0.5:40000 -> 10.0.0.6:22"
    assert "hv1: port security: 10.0.0.5 is a fixed IP of port vm1" in steps
    assert f"hv1: tunnel vxlan 4711 to {hv2_ip} (hv2)" in steps
    assert any(s.startswith("hv2: accepted from hv1") and "a peer of network" in s for s in steps)
    assert steps[-1] == "delivered to port vm2 (10.0.0.6) on hv2"

    spoofed = trace(dp_env, source_port_id=p1["id"], destination_ip="10.0.0.6", protocol="tcp",
                    destination_l4_port=22, source_ip="10.0.0.66")["trace"]  # fmt: skip
    show(spoofed)
    assert spoofed["verdict"] == "dropped" and spoofed["delivered_to"] == []
    assert spoofed["paths"][0]["steps"][-1] == (
        "hv1: dropped: port security: 10.0.0.66 is neither a fixed IP nor an allowed address "
        "pair of port vm1 (10.0.0.5)")


def test_bad_requests_name_the_field(dp_env: DataplaneEnv, pair) -> None:
    _, p1, _ = pair
    with pytest.raises(ApiError) as e:
        trace(dp_env, source_port_id="no-such-port", destination_ip="10.0.0.6")
    assert e.value.status == 404
    for body, field in (
        ({"destination_ip": "10.0.0.6", "protocol": "tcp", "destination_l4_port": 70000},
         "destination_l4_port"),
        ({"destination_ip": "10.0.0.300"}, "destination_ip"),
        ({"destination_ip": "10.0.0.77"}, "destination_ip"),  # nobody's address
        ({}, "destination_ip or destination_mac"),
        ({"destination_ip": "10.0.0.6", "ct_state": "bogus"}, "ct_state"),
        ({"destination_ip": "10.0.0.6", "color": 1}, "color"),
    ):  # fmt: skip
        with pytest.raises(ApiError) as e:
            trace(dp_env, source_port_id=p1["id"], **body)
        assert e.value.status == 400, (body, e.value.body)
        assert field in e.value.body["NeutronError"]["message"], (body, e.value.body)


def test_cli_prints_the_path(dp_env: DataplaneEnv, pair, capsys) -> None:
    _, p1, _ = pair
    code = cli.main(["trace", p1["id"], "--to-ip", "10.0.0.6", "--protocol", "udp",
                     "--dport", "53", "--url", dp_env.api.base, "--flows"])  # fmt: skip
    out, err = capsys.readouterr()
    print(out)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "udp 10.0.0.5:40000 -> 10.0.0.6:53 (desired flows): DELIVERED"
    assert "  delivered to port vm2 (10.0.0.6) on hv2" in lines
    assert any(line.startswith("hv1: ovs-appctl ofproto/trace br-int 'in_port=") for line in lines)
    code = cli.main(["trace", "nope", "--to-ip", "10.0.0.6", "--url", dp_env.api.base])
    _, err = capsys.readouterr()
    assert code == 1 and "404" in err and len(err.strip().splitlines()) == 1


def test_drift_shows_as_a_different_installed_answer(dp_env: DataplaneEnv, pair) -> None:
    """hv2's tunnel ingress rule for the network deleted behind the controller's back: the
    desired flows still deliver, the installed ones (read from the switches now) drop on hv2,
    at its classification."""
    _, p1, _ = pair
    body = {"source_port_id": p1["id"], "destination_ip": "10.0.0.6", "protocol": "icmp"}
    before = trace(dp_env, **body, installed=True)["trace"]
    assert before["verdict"] == "delivered", before
    hv2 = dp_env.hvs[1]
    match = "table=0,tun_id=4711"
    saved = [line.strip() for line in hv2.ofctl("--no-stats", "dump-flows", "br-int", match)
             .splitlines() if "actions=" in line]  # fmt: skip
    assert saved
    try:
        for _ in range(3):  # the drift audit may repair it in between (every 300 s per host)
            hv2.ofctl("del-flows", "br-int", match)
            desired = trace(dp_env, **body)["trace"]
            installed = trace(dp_env, **body, installed=True)["trace"]
            if not hv2.ofctl("dump-flows", "br-int", match).count("actions="):
                break
        show(installed)
        assert desired["verdict"] == "delivered"
        assert installed["verdict"] == "dropped"
        last = installed["paths"][0]["steps"][-1]
        assert last.startswith("hv2: dropped: hv2 accepts no vxlan key 4711 from"), last
    finally:
        for line in saved:
            hv2.ofctl("add-flow", "br-int", line)
