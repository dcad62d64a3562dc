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
    ports = {
        name: store.create_port(
            {"network_id": net["id"], "name": name, "fixed_ips": [{"ip_address": ip}]}
        )
        for name, ip in (("vm1", "10.0.0.5"), ("vm2", "10.0.0.6"), ("spare", "10.0.0.7"))
    }
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
        "desired",
        "delivered",
        [st["vm2"]["id"]],
    )
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
            rules = {
                r for r in rules if not (r.table == t.CLASSIFY and "tunnel_id" in dict(r.match))
            }
        st["switches"][rt.dpid] = Slice(frozenset(rules), frozenset(groups))
    installed = post(client, **body, installed=True).json()["trace"]
    assert (installed["mode"], installed["verdict"]) == ("installed", "dropped")
    assert installed["paths"][0]["steps"][-1].startswith("hv2: dropped: hv2 accepts no vxlan key")
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


def test_arp_from_an_ipv6_source_ip_is_a_400_naming_it(setup) -> None:
    """An ARP request's sender address is IPv4: an IPv6 ``source_ip`` used to reach
    make_packet and come back as a 500 (ValueError)."""
    client, _dp, st = setup
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.6",
             protocol="arp", source_ip="2001:db8::5")  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["NeutronError"]["message"].startswith("source_ip: ")


def test_a_wrong_type_names_the_field(setup) -> None:
    """The body has no resource envelope: a wrong type one level in used to be worded as the
    envelope's ("the resource must be a JSON object"), a union's as its branch ("str")."""
    client, _dp, st = setup
    r = post(client, source_port_id=5, destination_ip="10.0.0.6")
    assert r.status_code == 400
    assert r.json()["NeutronError"]["message"].startswith("Invalid input for source_port_id.")
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.6", ct_state=5)
    assert r.status_code == 400
    assert r.json()["NeutronError"]["message"].startswith("Invalid input for ct_state.")
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.6", ttl=3)
    assert r.json()["NeutronError"]["message"] == "Unrecognized attribute(s) 'ttl'"
    r = client.post("/tenantnet/trace", content=b"[]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.text


def test_the_cli_view_shows_control_characters_in_names_escaped(setup, store: Store) -> None:
    """Port names are the tenant's: an escape sequence or a newline in one used to reach the
    operator's terminal as is (clearing it, forging a line of the answer)."""
    client, _dp, st = setup
    store.update("port", st["vm2"]["id"], {"name": "vm2\x1b[2J\x1b]0;x\x07\nforged\u202e"})
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.6")
    doc = r.json()["trace"]
    assert "\x1b" in doc["paths"][0]["steps"][-1]  # the API answers the name as it is
    text = trace_view(doc, flows=True)
    assert not any(c in text for c in "\x1b\x07\u202e")
    assert "vm2\\x1b[2J\\x1b]0;x\\x07\\x0aforged\\u202e (10.0.0.6)" in text
    assert not any(line.startswith("forged") for line in text.splitlines())


def test_a_source_port_deleted_during_the_trace_is_a_404(setup, store: Store, monkeypatch) -> None:
    """The port is read, then its network's ports listed: a delete in between used to be a
    KeyError (500)."""
    client, _dp, st = setup
    listed = store.list_ports

    def list_ports_after_a_delete(**filters: Any) -> Any:
        if st["vm1"]["id"] in {p["id"] for p in listed()}:
            store.delete("port", st["vm1"]["id"])
        return listed(**filters)

    monkeypatch.setattr(store, "list_ports", list_ports_after_a_delete)
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.6")
    assert r.status_code == 404, r.text


def test_an_allowed_address_pair_is_a_destination(setup, store: Store) -> None:
    """The API lets a port receive for its allowed address pairs (a VIP): a trace to one used
    to be refused with "no port of the source port's network has" it."""
    client, dp, st = setup
    store.update("port", st["vm2"]["id"], {"allowed_address_pairs": [
        {"ip_address": "10.0.0.100"}]})  # fmt: skip
    st["dp"] = FakeDataPlane(store, dp.holders)  # its flows now let the pair in
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.100",
             protocol="tcp", destination_l4_port=80)  # fmt: skip
    assert r.status_code == 200, r.text
    doc = r.json()["trace"]
    assert (doc["verdict"], doc["delivered_to"]) == ("delivered", [st["vm2"]["id"]]), doc

    store.update("port", st["spare"]["id"], {"allowed_address_pairs": [
        {"ip_address": "10.0.0.100"}]})  # fmt: skip
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.100")
    assert r.status_code == 400
    assert "pair of several ports" in r.json()["NeutronError"]["message"]


def test_installed_traces_at_once_are_bounded(setup) -> None:
    """An installed trace dumps whole switches and holds an API thread while it waits: more
    than MAX_INSTALLED_TRACES at once get a 429 (they used to pile up without limit)."""
    import controller.tracer as tracer_mod

    client, _dp, st = setup
    release, reading = threading.Event(), threading.Semaphore(0)

    def stalled_read(dpid: int, on_done: Any) -> bool:
        reading.release()
        release.wait(10)
        on_done(None, "timeout")
        return True

    st["read"] = stalled_read
    body = {"source_port_id": st["vm1"]["id"], "destination_ip": "10.0.0.6", "installed": True}
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(post(client, **body).status_code))
               for _ in range(tracer_mod.MAX_INSTALLED_TRACES)]  # fmt: skip
    for th in threads:
        th.start()
    for _ in threads:
        assert reading.acquire(timeout=10)  # every one of them is reading a switch now
    extra = threading.Thread(target=lambda: codes.append(post(client, **body).status_code))
    extra.start()
    extra.join(5)
    release.set()
    for th in (*threads, extra):
        th.join(15)
    assert codes[0] == 429 and sorted(codes[1:]) == [200] * tracer_mod.MAX_INSTALLED_TRACES
    r = post(client, **body)  # the slots are free again
    assert r.status_code == 200 and r.json()["trace"]["verdict"] == "unknown"


def test_installed_trace_reads_share_one_budget(setup, monkeypatch) -> None:
    """Each switch read of an installed trace may take READ_TIMEOUT_S, and a packet visits one
    host after another: past READ_BUDGET_S the rest are not read (their flows are unknown)
    rather than holding the request for READ_TIMEOUT_S per host."""
    import controller.tracer as tracer_mod

    client, dp, st = setup
    now = [1000.0]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return now[0]

    def slow_read(dpid: int, on_done: Any) -> bool:
        now[0] += tracer_mod.READ_TIMEOUT_S  # every read takes its whole timeout
        rt = next(rt for rt in dp.hosts.values() if rt.dpid == dpid)
        owners = rt.installed or {}
        on_done(Slice(frozenset(r for s in owners.values() for r in s.rules),
                      frozenset(g for s in owners.values() for g in s.groups)), "")  # fmt: skip
        return True

    monkeypatch.setattr(tracer_mod, "time", Clock, raising=False)
    # the budget of one slow read: hv1's read spends it all, hv2's is not made
    monkeypatch.setattr(tracer_mod, "READ_BUDGET_S", tracer_mod.READ_TIMEOUT_S, raising=False)
    st["read"] = slow_read
    r = post(client, source_port_id=st["vm1"]["id"], destination_ip="10.0.0.6", installed=True)
    doc = r.json()["trace"]
    assert doc["verdict"] == "unknown", doc
    assert doc["paths"][0]["steps"][-1] == "hv2: its flows are not known"


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
    assert (
        request_body(p.parse_args(["P", "--to-ip", "10.0.0.6", "--ct-state", "new"]))["ct_state"]
        == "new"
    )
    doc = {
        "packet": "udp a -> b",
        "mode": "installed",
        "verdict": "delivered",
        "paths": [
            {"verdict": "delivered", "steps": ["one", "two"]},
            {"verdict": "dropped", "steps": ["x"]},
        ],
    }
    assert trace_view(doc).splitlines() == [
        "udp a -> b (installed flows): DELIVERED",
        "copy 1 of 2: delivered",
        "  one",
        "  two",
        "copy 2 of 2: dropped",
        "  x",
    ]
