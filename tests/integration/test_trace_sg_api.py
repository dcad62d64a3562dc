"""``POST /tenantnet/trace`` with security groups wired into the data plane, on real OVS: the
path of a connection a remote-group rule allows, the exact reason of one no rule allows, the
missing membership of a sender outside the remote group, and a reply that passes by conntrack
alone while a new connection the other way does not.  (That the evaluator's verdicts are OVS's
is test_trace_vs_ovs; that the flows do what the groups say with real connections,
test_security_groups.)"""

from __future__ import annotations

import pytest

from lab.tenantnet_proc import Api
from tests.integration import dataplane_fixtures
from tests.integration.dataplane_fixtures import DataplaneEnv, Tenancy

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env
PROJECT = "tenant-trace-sg"


def _group(api: Api, name: str) -> dict:
    body = {"security_group": {"name": name, "project_id": PROJECT}}
    return api.request("POST", "/v2.0/security-groups", body)["security_group"]


def _rule(api: Api, group: dict, **fields: object) -> dict:
    body = {"security_group_rule": {"security_group_id": group["id"], "direction": "ingress",
                                    "ethertype": "IPv4", **fields}}  # fmt: skip
    return api.request("POST", "/v2.0/security-group-rules", body)["security_group_rule"]


def _trace(env: DataplaneEnv, **body: object) -> dict:
    answer = env.api.request("POST", "/tenantnet/trace", body)["trace"]
    print(f"\n{answer['packet']}: {answer['verdict']}")
    for path in answer["paths"]:
        print("\n".join(f"  {s}" for s in path["steps"]))
    return answer


def test_security_group_verdicts_in_tenant_terms(dp_env: DataplaneEnv) -> None:
    t = Tenancy(dp_env, "trsg")
    api = dp_env.api
    web, db = _group(api, "web-tr"), _group(api, "db-tr")
    _rule(api, db, protocol="tcp", port_range_min=5432, port_range_max=5432,
          remote_group_id=web["id"])  # fmt: skip
    net = t.network(seg_id=4712, project=PROJECT, cidr="10.0.8.0/24")
    a = t.port(net, ip="10.0.8.5", name="app", security_groups=[web["id"]])
    b = t.port(net, ip="10.0.8.6", name="pg", security_groups=[db["id"]])
    c = t.port(net, ip="10.0.8.7", name="intruder", security_groups=[db["id"]])
    for hv, name, port in ((1, "trsga", a), (2, "trsgb", b), (1, "trsgc", c)):
        t.vm(hv, name, net, port=port)
    t.wait_active([a, b, c])

    ok = _trace(dp_env, source_port_id=a["id"], destination_ip="10.0.8.6", protocol="tcp",
                destination_l4_port=5432)  # fmt: skip
    assert ok["verdict"] == "delivered" and ok["delivered_to"] == [b["id"]]
    steps = ok["paths"][0]["steps"]
    assert "hv2: security groups: allowed by rule IPv4 tcp/5432 ingress from members of web-tr " \
           "of group db-tr" in steps
    assert any(s.startswith("hv1: security groups: allowed by rule IPv4 any protocol egress")
               for s in steps)  # the group's default egress rule

    denied = _trace(dp_env, source_port_id=a["id"], destination_ip="10.0.8.6", protocol="tcp",
                    destination_l4_port=22)  # fmt: skip
    assert denied["verdict"] == "dropped"
    assert denied["paths"][0]["steps"][-1] == (
        "hv2: dropped: no security-group rule of group(s) db-tr of port pg allows tcp "
        "10.0.8.5:40000 -> 10.0.8.6:22 ingress")

    outsider = _trace(dp_env, source_port_id=c["id"], destination_ip="10.0.8.6",
                      protocol="tcp", destination_l4_port=5432)  # fmt: skip
    assert outsider["verdict"] == "dropped"
    assert outsider["paths"][0]["steps"][-1].endswith(
        "; rule IPv4 tcp/5432 ingress from members of web-tr of group db-tr would, but "
        "10.0.8.7 is not an address of a member of web-tr")

    reply = _trace(dp_env, source_port_id=b["id"], destination_ip="10.0.8.5", protocol="tcp",
                   source_l4_port=5432, destination_l4_port=40000, ct_state="est,rpl")
    assert reply["verdict"] == "delivered"
    assert "hv1: security groups: a reply or related packet of an allowed connection" in \
        reply["paths"][0]["steps"]
    new = _trace(dp_env, source_port_id=b["id"], destination_ip="10.0.8.5", protocol="tcp",
                 source_l4_port=5432, destination_l4_port=40000)  # fmt: skip
    assert new["verdict"] == "dropped"  # app (web-tr) accepts no new connection at all
