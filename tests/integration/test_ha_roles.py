"""OpenFlow roles with generation ids on a real Open vSwitch (issue 18, docs/ha.md): what fences
a stale controller when several instances share a bridge.

Two sessions on one bridge stand for two controller instances, their role requests built by the
controller's own codec (`ofp_codec.role_request`, os-ken's OFPRoleRequest).  A new MASTER makes
the old one a slave, whose flow-mods the switch then refuses (OFPBRC_IS_SLAVE), and the old
master cannot take the role back with its older generation id (OFPRRFC_STALE).
"""

from __future__ import annotations

from typing import Any

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound import ofp_codec as codec
from flows.model import Apply, Output, Rule
from tests.integration.ofp_unix import DP, MgmtClient, OfpError

BRIDGE = "br-roles"


def _rule(port: int) -> Rule:
    return Rule(table=0, priority=10, match=(("in_port", port),),
                instructions=(Apply((Output(port + 1),)),), cookie=0x7E4E0000000000AA)  # fmt: skip


def _role(client: MgmtClient, master: bool, generation: int) -> Any:
    """Ask for a role; the switch's reply (OFPRoleReply), or OfpError with its code."""
    client.send_all([codec.role_request(DP, master, generation)])
    return client


def _code(exc: OfpError) -> tuple[int, int]:
    text = str(exc)
    kind = int(text.split("type ")[1].split()[0])
    code = int(text.split("code ")[1])
    return kind, code


@pytest.fixture
def two_controllers(make_lab):  # type: ignore[no-untyped-def]
    hv = make_lab(1).hv(1)
    hv.vsctl("add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev",
             "fail_mode=secure", "protocols=OpenFlow13")  # fmt: skip
    path = f"{hv.dir}/{BRIDGE}.mgmt"
    with MgmtClient(path) as old, MgmtClient(path) as new:
        yield hv, old, new
    hv.vsctl("--if-exists", "del-br", BRIDGE)


def test_a_newer_master_fences_the_old_one(two_controllers) -> None:  # type: ignore[no-untyped-def]
    hv, old, new = two_controllers
    _role(old, True, 10)
    old.send_all([codec.flow_add(DP, _rule(1))])  # the master may write
    _role(new, True, 20)  # failover: the new owner, at a later etcd revision
    with pytest.raises(OfpError) as refused:
        old.send_all([codec.flow_add(DP, _rule(2))])
    assert _code(refused.value) == (ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)
    with pytest.raises(OfpError) as stale:
        _role(old, True, 10)  # the stale master cannot take the role back
    assert _code(stale.value) == (ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE)
    with pytest.raises(OfpError):
        old.send_all([codec.flow_add(DP, _rule(3))])
    new.send_all([codec.flow_add(DP, _rule(4))])
    flows = "\n".join(hv.dump_flows(BRIDGE))
    assert "in_port=1" in flows and "in_port=4" in flows
    assert "in_port=2" not in flows and "in_port=3" not in flows
    # a slave that asks for its role with the master's generation keeps reading
    _role(old, False, 20)
    assert old.dump_rules()


def test_generation_ids_compare_as_signed_64_bit_differences(two_controllers) -> None:  # type: ignore[no-untyped-def]
    """The id is masked to 64 bits and compared as OVS compares them (wrap-around safe)."""
    _, old, new = two_controllers
    msg = codec.role_request(DP, True, 2**64 + 5)
    assert msg.generation_id == 5 and msg.role == ofp.OFPCR_ROLE_MASTER
    assert isinstance(codec.role_request(DP, False, 1), parser.OFPRoleRequest)
    _role(new, True, 2**64 - 1)
    _role(old, True, 2**64 + 1)  # 1 after wrapping: newer than 2**64 - 1
    with pytest.raises(OfpError):
        new.send_all([codec.flow_add(DP, _rule(5))])


def test_a_new_session_refused_master_stays_equal_and_takes_flow_mods(two_controllers) -> None:  # type: ignore[no-untyped-def]
    """Why the controller sends flows only on a session the switch confirmed MASTER
    (`TenantnetOfpApp._hold`): a stale instance that connects again starts EQUAL, its MASTER
    request is refused as stale, and OVS still takes that EQUAL session's flow-mods.  The
    generation id fences a stale master's existing session, not a new one."""
    hv, _, new = two_controllers
    _role(new, True, 20)
    with MgmtClient(f"{hv.dir}/{BRIDGE}.mgmt") as fresh:
        with pytest.raises(OfpError) as stale:
            _role(fresh, True, 10)
        assert _code(stale.value) == (ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE)
        fresh.send_all([codec.flow_add(DP, _rule(6))])
    assert "in_port=6" in "\n".join(hv.dump_flows(BRIDGE))
