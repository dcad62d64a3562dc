"""``POST /tenantnet/trace`` over a real store and API with a stand-in data plane that holds
compiled flows (the real OVS version is tests/integration/test_trace_api.py): desired and
installed answers, drift between them, and the 404/409/503 answers."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from controller.api.trace import add_trace_route
from controller.cli_trace import trace_view
from controller.dataplane.reconciler import HostRuntime
from controller.dataplane.state import HostRec, Mirror, PortRec
from controller.dataplane.views import host_context, local_port_of, remote_port_of
from controller.southbound.ovsdb_host import HostObservation
from controller.store import Store
from controller.tracer import Request, Tracer
from flows import tables as t
from flows.compiler import compile_base, compile_network_owners
from flows.model import NetworkView, Slice
from tests.unit.conftest import ClientFactory, TestClient
from tests.unit.test_dataplane import Cloud, cloud

__all__ = ["cloud"]  # the fixture: a running DataPlane over fake agents and wire-level switches

HOSTS = {"hv1": "192.0.2.1", "hv2": "192.0.2.2"}
TUNNELS = {"vxlan": 1}


class FakeDataPlane:
    """What the tracer reads of the data plane: hosts (what each was last sent) and holders."""

    def __init__(self, store: Store, where: dict[str, str]) -> None:
        ports = {p["id"]: PortRec.from_store(p) for p in store.list_ports()}
        net = store.list_networks()[0]
        self.holders = where
        ofports = {pid: 10 + i for i, pid in enumerate(sorted(where))}
        self.hosts: dict[str, HostRuntime] = {}
        for host, ip in HOSTS.items():
            mine = {pid: of for pid, of in ofports.items() if where[pid] == host}
            ctx = host_context(ip, TUNNELS)
            view = NetworkView(
                int(net["_key"]), "vxlan", int(net["provider:segmentation_id"]),
                tuple(local_port_of(ports[p], of) for p, of in mine.items()),
                tuple(remote_port_of(ports[p], HOSTS[h]) for p, h in where.items() if h != host),
                tuple(HOSTS[h] for h in set(where.values()) - {host}),
            )  # fmt: skip
            owners = compile_network_owners(ctx, view)
            owners[t.BASE_COOKIE] = compile_base(ctx)
            self.hosts[host] = HostRuntime(HostRec(host, ip, {}), dpid=len(self.hosts) + 1,
                                           obs=HostObservation(mine, dict(TUNNELS)),
                                           installed=owners)  # fmt: skip
        self.timeout = False
        self.mirror = Mirror()  # no router: the trace stays in the source port's network

    @property
    def bindings(self) -> Any:
        return self

    def holder(self, port_id: str) -> str | None:
        return self.holders.get(port_id)

    def on_actor(self, fn: Any, timeout: float) -> Any:
        if self.timeout:
            raise TimeoutError(f"the data plane did not answer within {timeout:g} s")
        return fn(self)


@pytest.fixture
def setup(store: Store, make_client: ClientFactory) -> tuple[TestClient, FakeDataPlane, dict]:
    net = store.create_network({"name": "web", "provider:network_type": "vxlan"})
    store.create_subnet({"network_id": net["id"], "cidr": "10.0.0.0/24", "ip_version": 4})
    ports = {name: store.create_port({"network_id": net["id"], "name": name,
                                      "fixed_ips": [{"ip_address": ip}]})
             for name, ip in (("vm1", "10.0.0.5"), ("vm2", "10.0.0.6"), ("spare", "10.0.0.7"))}
    dp = FakeDataPlane(store, {ports["vm1"]["id"]: "hv1", ports["vm2"]["id"]: "hv2"})
    switches: dict[int, Slice | None] = {}

    def read_all(dpid: int, on_done: Any) -> bool:
        on_done(switches.get(dpid), "")
        return True

    state: dict[str, Any] = {"dp": dp, "read": read_all, "switches": switches, **ports}
    client = make_client()
    add_trace_route(client.app, Tracer(store, lambda: state["dp"], lambda: state["read"]))  # type: ignore[arg-type]
    return client, dp, state


def post(client: TestClient, **body: Any) -> Any:
    return client.post("/tenantnet/trace", json=body)


def test_desired_and_installed_answers_and_drift_between_them(setup) -> None:
    client, dp, st = setup
    body = {"source_port_id": st["vm1"]["id"], "destination_ip": "10.0.0.6",
            "protocol": "tcp", "destination_l4_port": 22}  # fmt: skip
    r = post(client, **body)
    assert r.status_code == 200, r.text
    doc = r.json()["trace"]
    assert (doc["mode"], doc["verdict"], doc["delivered_to"]) == (
        "desired", "delivered", [st["vm2"]["id"]])
    assert doc["paths"][0]["steps"][-1] == "delivered to port vm2 (10.0.0.6) on hv2"
    assert [h["host"] for h in doc["hosts"]] == ["hv1", "hv2"]
    obs = dp.hosts["hv1"].obs
    assert obs is not None
    ofport = obs.bindings[st["vm1"]["id"]]
    assert doc["hosts"][0]["ofproto_trace"].startswith(f"in_port={ofport},dl_dst=")
    text = trace_view(doc, flows=True)
    assert text.splitlines()[0] == "tcp 10.0.0.5:40000 -> 10.0.0.6:22 (desired flows): DELIVERED"

    # the switches hold what was sent, except hv2's tunnel ingress for the network
    for host, rt in dp.hosts.items():
        owners = rt.installed or {}
        rules = {r for s in owners.values() for r in s.rules}
        groups = {g for s in owners.values() for g in s.groups}
        if host == "hv2":
            rules = {r for r in rules if not (r.table == t.CLASSIFY and "tunnel_id" in dict(
                r.match))}
        st["switches"][rt.dpid] = Slice(frozenset(rules), frozenset(groups))
    installed = post(client, **body, installed=True).json()["trace"]
    assert (installed["mode"], installed["verdict"]) == ("installed", "dropped")
    assert installed["paths"][0]["steps"][-1].startswith(
        "hv2: dropped: hv2 accepts no vxlan key")
    assert post(client, **body).json()["trace"]["verdict"] == "delivered"  # desired: unchanged

    st["switches"][dp.hosts["hv2"].dpid] = None  # hv2 does not answer its read
    unknown = post(client, **body, installed=True).json()["trace"]
    assert unknown["verdict"] == "unknown"
    assert unknown["paths"][0]["steps"][-1] == "hv2: its flows are not known"


def test_errors(setup) -> None:
    client, dp, st = setup
    body = {"destination_ip": "10.0.0.6"}
    r = post(client, source_port_id="nope", **body)
    assert r.status_code == 404 and "nope" in r.json()["NeutronError"]["message"]
    r = post(client, source_port_id=st["spare"]["id"], **body)
    assert r.status_code == 409 and "not bound" in r.json()["NeutronError"]["message"]
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.99")
    assert r.status_code == 400
    assert r.json()["NeutronError"]["message"].startswith("destination_ip: no port")
    r = post(client, source_port_id=st["vm1"]["id"], destination_mac="ff:ff:ff:ff:ff:ff",
             protocol="tcp")  # fmt: skip
    assert r.status_code == 400 and "destination_ip" in r.text
    r = post(client, source_port_id=st["vm1"]["id"], protocol=300, **body)
    assert r.status_code == 400 and "protocol" in r.text
    dp.timeout = True
    r = post(client, source_port_id=st["vm1"]["id"], **body)
    assert r.status_code == 503 and "did not answer" in r.text
    st["dp"] = None
    assert post(client, source_port_id=st["vm1"]["id"], **body).status_code == 503
    st["dp"], st["read"] = dp, None
    dp.timeout = False
    r = post(client, source_port_id=st["vm1"]["id"], installed=True, **body)
    assert r.status_code == 503 and "not available" in r.text


def test_the_real_data_plane_answers_on_its_actor(cloud: Cloud) -> None:
    """The tracer against a running DataPlane: its snapshot is taken on the actor thread
    (`DataPlane.on_actor`), and the flows it planned equal what the (wire-level fake)
    switches hold, so both modes give the same answer."""
    cloud.start(hosts=2)
    net = cloud.network()
    a, b = cloud.port(net, "hv1", 3), cloud.port(net, "hv2", 4)
    cloud.idle()

    def read_all(dpid: int, on_done: Any) -> bool:
        on_done(cloud.switches.installed(dpid), "")
        return True

    tracer = Tracer(cloud.store, lambda: cloud.dp, lambda: read_all)
    ip = cloud.store.get_port(b["id"])["fixed_ips"][0]["ip_address"]
    for installed in (False, True):
        doc = tracer.trace(Request(a["id"], destination_ip=ip, protocol="udp",
                                   destination_l4_port=53, installed=installed))  # fmt: skip
        assert (doc["verdict"], doc["delivered_to"]) == ("delivered", [b["id"]]), doc
        assert [h["host"] for h in doc["hosts"]] == ["hv1", "hv2"]
    assert threading.current_thread() is not cloud.dp._thread
    answered = cloud.dp.on_actor(lambda dp: threading.current_thread(), 5)
    assert answered is cloud.dp._thread


def test_cli_request_and_view() -> None:
    import argparse

    from controller.cli_trace import add_arguments, request_body

    p = argparse.ArgumentParser()
    add_arguments(p)
    body = request_body(p.parse_args(["P", "--to-mac", "ff:ff:ff:ff:ff:ff", "--to-ip",
                                      "10.0.0.255", "--protocol", "47", "--ct-state", "est",
                                      "--ct-state", "est,rpl"]))  # fmt: skip
    assert body["protocol"] == 47 and body["ct_state"] == ["est", "est,rpl"]
    assert body["destination_mac"] == "ff:ff:ff:ff:ff:ff" and "source_ip" not in body
    assert request_body(p.parse_args(["P", "--to-ip", "10.0.0.6", "--ct-state", "new"]))[
        "ct_state"] == "new"
    doc = {"packet": "udp a -> b", "mode": "installed", "verdict": "delivered", "paths": [
        {"verdict": "delivered", "steps": ["one", "two"]}, {"verdict": "dropped", "steps": ["x"]}]}
    assert trace_view(doc).splitlines() == [
        "udp a -> b (installed flows): DELIVERED", "copy 1 of 2: delivered", "  one", "  two",
        "copy 2 of 2: dropped", "  x"]
