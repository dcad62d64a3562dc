"""`switch_poke.poke`: the fast reconnect's target rewrite before the IDL, against a real
ovsdb-server (a private one on a unix socket in the test's directory, no vswitchd: only what
the poke writes is checked here; that the switch then reconnects at once without losing a flow
is tests/integration/test_fast_reconnect.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.southbound import switch_poke
from controller.southbound.ovsdb_host import alternate_target
from tests.unit.private_ovsdb import PrivateOvsdb as Db
from tests.unit.private_ovsdb import running_ovsdb

OURS = "tcp:192.0.2.254:6653"
OTHER = "tcp:[192.0.2.254]:6653"
SPELLINGS = {OURS: OTHER, OTHER: OURS}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    with running_ovsdb(tmp_path, "br-int") as d:
        yield d


def test_our_only_controller_is_rewritten_in_its_other_spelling(db: Db) -> None:
    db.vsctl("set-controller", "br-int", OURS)
    assert switch_poke.poke(db.target, "br-int", SPELLINGS, 5) == OTHER
    assert db.targets() == [OTHER]
    assert switch_poke.poke(db.target, "br-int", SPELLINGS, 5) == OURS  # and back
    assert db.targets() == [OURS]
    assert alternate_target(OURS) == OTHER  # the spellings the agent hands it


@pytest.mark.parametrize(
    "controllers",
    [
        [],  # no controller: ensure_config creates ours
        ["tcp:198.51.100.1:6653"],  # a foreign one: ensure_config replaces it
        [OURS, "tcp:198.51.100.1:6653"],  # ours beside another: likewise
    ],
)
def test_a_bridge_not_in_the_fast_reconnects_shape_is_left_alone(
    db: Db, controllers: list[str]
) -> None:
    if controllers:
        db.vsctl("set-controller", "br-int", *controllers)
    assert switch_poke.poke(db.target, "br-int", SPELLINGS, 5) is None
    assert db.targets() == sorted(controllers)


def test_no_such_bridge_is_left_alone(db: Db) -> None:
    db.vsctl("set-controller", "br-int", OURS)
    assert switch_poke.poke(db.target, "br-other", SPELLINGS, 5) is None
    assert db.targets() == [OURS]


def test_an_unreachable_ovsdb_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(switch_poke.PokeError):
        switch_poke.poke(f"unix:{tmp_path / 'none.sock'}", "br-int", SPELLINGS, 1)


def test_a_server_that_never_answers_is_given_up_on(tmp_path: Path) -> None:
    """A listener that accepts and says nothing (a hung ovsdb-server): the poke is bounded."""
    import socket

    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(str(path))
    mute.listen(1)
    try:
        with pytest.raises(switch_poke.PokeError, match="no answer"):
            switch_poke.poke(f"unix:{path}", "br-int", SPELLINGS, 0.3)
    finally:
        mute.close()


def test_the_bridges_interfaces_are_read_with_their_ofports_and_iface_ids(db: Db) -> None:
    """What the agent reports before its IDL loads (`OvsdbHost._early_read`): only the named
    bridge's interfaces, an unassigned ofport as None; a read alone writes nothing."""
    db.vsctl("set-controller", "br-int", OURS)
    db.vsctl("add-port", "br-int", "vm1", "--", "set", "Interface", "vm1",
             "external_ids:iface-id=port-1", "ofport=7")  # fmt: skip
    db.vsctl("add-port", "br-int", "tn-vxlan", "--", "set", "Interface", "tn-vxlan",
             "ofport=64001")  # fmt: skip
    db.vsctl("add-port", "br-int", "vm2", "--", "set", "Interface", "vm2",
             "external_ids:iface-id=port-2")  # fmt: skip
    db.vsctl("add-br", "br-ex")
    db.vsctl("add-port", "br-ex", "ex1", "--", "set", "Interface", "ex1",
             "external_ids:iface-id=port-x", "ofport=3")  # fmt: skip
    read = switch_poke.read_and_poke(db.target, "br-int", {}, 5)
    assert read.written is None and db.targets() == [OURS]
    assert read.interfaces is not None
    assert sorted(read.interfaces, key=lambda i: i.name) == [
        switch_poke.Iface("br-int", None, None),  # the bridge's own port, no ofport set here
        switch_poke.Iface("tn-vxlan", 64001, None),
        switch_poke.Iface("vm1", 7, "port-1"),
        switch_poke.Iface("vm2", None, "port-2"),
    ]
    poked = switch_poke.read_and_poke(db.target, "br-int", SPELLINGS, 5)
    assert poked.written == OTHER and poked.interfaces == read.interfaces
    assert switch_poke.read_and_poke(db.target, "br-none", SPELLINGS, 5).interfaces is None


def test_the_agent_reports_the_early_read_and_its_idl_waits_for_the_reconcile(db: Db) -> None:
    """`OvsdbHost._early_read` reports the bindings and tunnel ofports it read (what the data
    plane reconciles a host with) and pokes a switch without a session; `_defer_idl` then
    waits until the data plane says every host is reconciled (asked on every look) or the
    agent stops."""
    from controller.southbound.ovsdb_host import HostObservation, OvsdbHost

    db.vsctl("set-controller", "br-int", OURS)
    db.vsctl("add-port", "br-int", "vm1", "--", "set", "Interface", "vm1",
             "external_ids:iface-id=port-1", "ofport=7")  # fmt: skip
    db.vsctl("add-port", "br-int", "tn-gre", "--", "set", "Interface", "tn-gre",
             "ofport=64002")  # fmt: skip
    reported: list[HostObservation] = []
    looks: list[int] = []

    def reconciled() -> bool:
        looks.append(1)
        return len(looks) >= 3

    host = {"id": "hv1", "ovsdb": db.target, "tunnel_ip": "192.0.2.1"}
    agent = OvsdbHost(
        host, OURS, lambda h, obs: reported.append(obs), lambda h, up: None,
        switch_connected=lambda dpid: False, idl_may_load=reconciled,
    )  # fmt: skip
    assert agent._early_read()
    assert reported == [HostObservation(bindings={"port-1": 7}, tunnel_ofports={"gre": 64002})]
    assert db.targets() == [OTHER]  # the switch was told to reconnect
    agent._defer_idl()
    assert len(looks) == 3  # waited until the data plane had reconciled, not longer
    agent.stop()
    looks.clear()
    agent._defer_idl()
    assert len(looks) == 1  # a stopped agent does not wait


def test_no_bridge_yet_reports_nothing_and_the_idl_loads_at_once(db: Db) -> None:
    from controller.southbound.ovsdb_host import OvsdbHost

    reported: list[object] = []
    host = {"id": "hv1", "ovsdb": db.target, "tunnel_ip": "192.0.2.1", "integration_bridge": "br-x"}
    agent = OvsdbHost(
        host, OURS, lambda h, obs: reported.append(obs), lambda h, up: None,
        switch_connected=lambda dpid: False, idl_may_load=lambda: False,
    )  # fmt: skip
    assert not agent._early_read() and reported == []


def test_start_up_pokes_every_host_whose_switch_has_no_session(db: Db, tmp_path: Path) -> None:
    """`poke_switches` (service start-up, before the API is built): a switch without a
    session is told to reconnect, one with a session (or waiting for admission) is left alone,
    an unreachable host does not keep the others from being poked."""
    from controller.southbound.ovsdb_host import datapath_id_for, poke_switches

    db.vsctl("set-controller", "br-int", OURS)
    hosts = [{"id": "hv1", "ovsdb": db.target},
             {"id": "hv2", "ovsdb": f"unix:{tmp_path / 'none.sock'}"}]  # fmt: skip
    connected = {datapath_id_for("hv1")}
    for t in poke_switches(hosts, OURS, lambda dpid: dpid in connected):
        t.join()
    assert db.targets() == [OURS]  # hv1 has a session: untouched
    connected.clear()
    for t in poke_switches(hosts, OURS, lambda dpid: dpid in connected):
        t.join()
    assert db.targets() == [OTHER]


def test_the_start_up_pokes_read_is_what_the_agent_reports_once(db: Db) -> None:
    """The bridge read by the start-up poke (`EarlyReads`) is what the host's agent reports,
    without reading or poking again (a second poke would undo the first: a switch told to
    reconnect twice); it is taken once, and never for another OVSDB target."""
    from controller.southbound.ovsdb_host import (
        EarlyReads,
        HostObservation,
        OvsdbHost,
        poke_switches,
    )

    db.vsctl("set-controller", "br-int", OURS)
    db.vsctl("add-port", "br-int", "vm1", "--", "set", "Interface", "vm1",
             "external_ids:iface-id=port-1", "ofport=7")  # fmt: skip
    host = {"id": "hv1", "ovsdb": db.target, "tunnel_ip": "192.0.2.1"}
    reads = EarlyReads()
    for t in poke_switches([host], OURS, lambda dpid: False, reads):
        t.join()
    assert db.targets() == [OTHER]
    db.vsctl("add-port", "br-int", "vm2", "--", "set", "Interface", "vm2",
             "external_ids:iface-id=port-2", "ofport=8")  # fmt: skip
    reported: list[HostObservation] = []
    agent = OvsdbHost(
        host, OURS, lambda h, obs: reported.append(obs), lambda h, up: None,
        switch_connected=lambda dpid: False, early_reads=reads,
    )  # fmt: skip
    agent.claim_early_read()  # as start() does
    assert agent._early_read()
    assert reported == [HostObservation(bindings={"port-1": 7}, tunnel_ofports={})]
    assert db.targets() == [OTHER]  # not poked again
    assert agent._early_read()  # taken: read (and poked) afresh
    assert reported[-1].bindings == {"port-1": 7, "port-2": 8} and db.targets() == [OURS]
    reads.put("hv1", "unix:/elsewhere.sock", "br-int", switch_poke.Poked(OTHER, ()))
    assert reads.take("hv1", db.target, "br-int") is None


def test_a_start_up_read_that_comes_after_its_agent_asked_is_dropped() -> None:
    """A poke finishing after the host's agent took (nothing, then) its read must not stay for
    a much later agent of that host (restarted on a host update): that would report an
    hours-old bridge as the current one."""
    from controller.southbound.ovsdb_host import EarlyReads

    reads = EarlyReads()
    assert reads.take("hv1", "tcp:192.0.2.1:6640", "br-int") is None
    reads.put("hv1", "tcp:192.0.2.1:6640", "br-int", switch_poke.Poked(OTHER, ()))
    assert reads.take("hv1", "tcp:192.0.2.1:6640", "br-int") is None


def test_start_up_reads_are_gone_once_the_table_is_closed() -> None:
    """Closed once the data plane's first agents have claimed theirs: a read never taken (its
    host's agent did not start) and any later one are not given to a later agent."""
    from controller.southbound.ovsdb_host import EarlyReads

    reads = EarlyReads()
    reads.put("hv1", "tcp:192.0.2.1:6640", "br-int", switch_poke.Poked(OTHER, ()))
    reads.put("hv2", "tcp:192.0.2.2:6640", "br-int", switch_poke.Poked(OTHER, ()))
    assert reads.take("hv2", "tcp:192.0.2.2:6640", "br-int") is not None  # before the close
    reads.close()
    assert reads.take("hv1", "tcp:192.0.2.1:6640", "br-int") is None
    reads.put("hv3", "tcp:192.0.2.3:6640", "br-int", switch_poke.Poked(OTHER, ()))
    assert reads.take("hv3", "tcp:192.0.2.3:6640", "br-int") is None


def test_an_ofport_openflow_cannot_name_is_no_binding() -> None:
    """What a host's OVSDB says its interfaces' ofports are is checked before it reaches the
    data plane: an iface-id set on the bridge's own interface (65534, OpenFlow 1.0's LOCAL),
    or a number OVS would never assign (0xff00 and up: refused in an OpenFlow 1.3 flow, which
    failed the host's whole bundle; huge ones do not fit the wire at all), binds nothing and
    is no tunnel port; a valid one still does."""
    from controller.southbound.ovsdb_host import _classify, _observation

    bad = (0, -1, 65280, 65534, 0xFFFFFFFD, 2**40)
    seen = [_classify("br-int", n, f"port-{n}") for n in bad]
    seen += [_classify("tn-vxlan", n, None) for n in bad]
    seen += [_classify("vm1", 7, "port-1"), _classify("tn-gre", 64002, None)]
    obs = _observation(seen)
    assert obs.bindings == {"port-1": 7} and obs.tunnel_ofports == {"gre": 64002}
    assert _classify("vm9", 65279, "port-9") == ("binding", "port-9", 65279)
