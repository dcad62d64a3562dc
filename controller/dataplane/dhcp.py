"""The DHCP packet-in handler: a punted frame -> the port it came from -> the pure responder.

The punt rules are the port owner's (`flows.compiler.local_port_fragment`: a port with an IPv4
address in a subnet with enable_dhcp sends UDP 68 -> 67 to the controller from the port-security
table), so a packet-in's cookie names the port whose rule sent it.  The handler runs on the
southbound's packet-in worker (`controller.southbound.packet_in`: a bounded queue, never the
actor's thread nor a switch's receive thread); it reads the data plane's state - immutable
records looked up by key - and never the store, never waits on anything, and never writes.

Who asks is decided by the switch, never by the frame: the packet-in must come from the punt
rule of a port (its cookie), on the host that holds that port, from the ofport that host's
OVSDB shows for it.  Anything else (a stale rule of a port that moved or was deleted, a
cookie of another owner) gets no answer.  The frame itself is checked by the responder
(`controller.services.dhcp`: chaddr must be the port's MAC, the port admin up, an address in a
DHCP subnet).
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.dataplane.bindings import Bindings
from controller.dataplane.planner import HostFacts
from controller.dataplane.state import Mirror
from controller.services.dhcp import DhcpResponder
from controller.southbound.packet_in import PacketIn
from flows import tables as t


class DhcpPunt:
    """Answers the DHCP packet-ins of every host from the data plane's state."""

    def __init__(
        self,
        mirror: Mirror,
        bindings: Bindings,
        hosts: Mapping[str, HostFacts],
        by_dpid: Mapping[int, str],
        responder: DhcpResponder,
    ) -> None:
        self.mirror = mirror
        self.bindings = bindings
        self.hosts = hosts
        self.by_dpid = by_dpid
        self.responder = responder
        self.unmatched = 0  # packet-ins no current port's punt rule explains

    def handle(self, pkt: PacketIn) -> bytes | None:
        """The reply frame for the packet-in's in_port, or None."""
        port = None
        if pkt.table_id == t.PORT_SECURITY and t.owner_kind(pkt.cookie) == t.OwnerKind.PORT:
            port = self.mirror.port_by_num(t.owner_num(pkt.cookie))
        host_id = self.by_dpid.get(pkt.dpid)
        rt = self.hosts.get(host_id) if host_id is not None else None
        obs = rt.obs if rt is not None else None
        if (
            port is None
            or obs is None
            or obs.bindings.get(port.id) != pkt.in_port
            or self.bindings.holder(port.id) != host_id
        ):
            self.unmatched += 1
            return None
        facts = self.mirror.dhcp_facts(port)
        if facts is None:
            self.unmatched += 1
            return None
        return self.responder.respond(pkt.data, *facts)
