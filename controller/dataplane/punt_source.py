"""Which port a packet-in speaks for: decided by the switch, never by the frame.

A packet-in that a port's own rule sent (the DHCP punt, the ARP copy of an address pair: both
in the port-security table, with the port's cookie) speaks for that port only if the port is
current, the packet-in comes from the host that holds it, and from the ofport that host's
OVSDB shows for it.  Anything else - a stale rule of a port that moved or was deleted, a cookie
of another owner, a switch that names an ofport it does not have - speaks for nobody.  The
handlers that act on such packet-ins (`controller.dataplane.dhcp`, `controller.dataplane.vips`)
share this check so that neither can be fooled where the other is not.

Reads the data plane's state only (immutable records looked up by key): callable from any
thread, never waits, never writes.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.dataplane.bindings import Bindings
from controller.dataplane.planner import HostFacts
from controller.dataplane.state import Mirror, PortRec
from controller.southbound.packet_in import PacketIn
from flows import tables as t


def from_port_rule(pkt: PacketIn) -> bool:
    """Whether a port's own port-security rule sent ``pkt`` by its table and cookie: the
    cheap first check, before the frame is parsed or the port looked up (`PortPunts.sender`
    makes it too)."""
    return pkt.table_id == t.PORT_SECURITY and t.owner_kind(pkt.cookie) == t.OwnerKind.PORT


class PortPunts:
    """The data plane's view a port-rule packet-in is checked against (`sender`)."""

    def __init__(
        self,
        mirror: Mirror,
        bindings: Bindings,
        hosts: Mapping[str, HostFacts],
        by_dpid: Mapping[int, str],
    ) -> None:
        self.mirror = mirror
        self.bindings = bindings
        self.hosts = hosts
        self.by_dpid = by_dpid

    def sender(self, pkt: PacketIn) -> tuple[PortRec, str] | None:
        """The port whose port-security rule sent ``pkt``, and its host; None if the switch's
        word does not add up (see the module docstring)."""
        if not from_port_rule(pkt):
            return None
        port = self.mirror.port_by_num(t.owner_num(pkt.cookie))
        host_id = self.by_dpid.get(pkt.dpid)
        rt = self.hosts.get(host_id) if host_id is not None else None
        obs = rt.obs if rt is not None else None
        if (
            port is None
            or host_id is None
            or obs is None
            or pkt.in_port is None
            or obs.bindings.get(port.id) != pkt.in_port
            or self.bindings.holder(port.id) != host_id
        ):
            return None
        return port, host_id
