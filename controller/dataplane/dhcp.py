"""The DHCP packet-in handler: a punted frame -> the port it came from -> the pure responder.

The punt rules are the port owner's (`flows.compiler.local_port_fragment`: a port with an IPv4
address in a subnet with enable_dhcp sends UDP 68 -> 67 to the controller from the port-security
table), so a packet-in's cookie names the port whose rule sent it.  The handler runs where
`controller.southbound.packet_in` calls it - one call at a time, on its worker or, bounded, on
the receive thread of the switch that asked (never the actor's thread); it reads the data
plane's state - immutable records looked up by key - and never the store, never waits on
anything (a wait there would hold a switch's receive thread), and never writes.

Who asks is decided by the switch, never by the frame: the packet-in must come from the punt
rule of a port (its cookie), on the host that holds that port, from the ofport that host's
OVSDB shows for it (`controller.dataplane.punt_source`, shared with the ARP copies of
`controller.dataplane.vips`).  Anything else (a stale rule of a port that moved or was
deleted, a cookie of another owner) gets no answer.  The frame itself is checked by the responder
(`controller.services.dhcp`: chaddr must be the port's MAC, the port admin up, an address in a
DHCP subnet).

A port that sends more than its budget (`controller.services.dhcp_guard`) gets a drop rule
above its punt rule on its switch (`flows.compiler.dhcp_guard_rule`, hard timeout, doubling per
repeated offence), logged once per offence; its packet-ins already queued are dropped.  The
budget is counted per port the switch named, after the checks above, so a forged frame cannot
get another port banned.  Everything answered or dropped is counted (`status`, exported as
``tenantnet_dhcp_*`` metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controller.dataplane.punt_source import PortPunts
from controller.services.dhcp import DhcpResponder
from controller.services.dhcp_guard import DROP, Ban, FloodGuard
from controller.southbound.packet_in import PacketIn
from flows.compiler import dhcp_guard_rule
from flows.model import Rule

LOG = logging.getLogger(__name__)

BanSender = Callable[[int, Rule, int], bool]  # (dpid, rule, hard timeout s) -> sent


class DhcpPunt:
    """Answers the DHCP packet-ins of every host from the data plane's state."""

    def __init__(
        self,
        source: PortPunts,
        responder: DhcpResponder,
        guard: FloodGuard | None = None,
        send_ban: BanSender | None = None,
    ) -> None:
        self.source = source
        self.mirror = source.mirror
        self.responder = responder
        # not ``guard or ...``: a guard that tracks no port yet has a length of 0
        self.guard = guard if guard is not None else FloodGuard()
        self.send_ban = send_ban
        self.unmatched = 0  # packet-ins no current port's punt rule explains
        self.flooded = 0  # packet-ins of a port over its budget, dropped
        self.bans = 0  # offences (each one drop rule sent)
        self.ban_failures = 0  # drop rules the switch could not be sent

    def handle(self, pkt: PacketIn) -> bytes | None:
        """The reply frame for the packet-in's in_port, or None."""
        sender = self.source.sender(pkt)
        if sender is None:
            self.unmatched += 1
            return None
        port, host_id = sender
        verdict = self.guard.admit(port.num)
        if verdict == DROP or isinstance(verdict, Ban):
            self.flooded += 1
            if isinstance(verdict, Ban):
                self._ban(pkt, port.id, port.num, str(host_id), verdict)
            return None
        facts = self.mirror.dhcp_facts(port)
        if facts is None:
            self.unmatched += 1
            return None
        return self.responder.respond(pkt.data, *facts)

    def after_replies(self) -> None:
        """Work that waited for the replies to be sent: the ACKs for the DISCOVERs just
        answered (`DhcpResponder.build_ahead`)."""
        self.responder.build_ahead()

    def _ban(self, pkt: PacketIn, port_id: str, num: int, host_id: str, ban: Ban) -> None:
        assert pkt.in_port is not None  # the ofport check above
        self.bans += 1
        sent = self.send_ban is not None and self.send_ban(
            pkt.dpid, dhcp_guard_rule(pkt.in_port, num), ban.seconds
        )
        if not sent:
            self.ban_failures += 1
        LOG.warning(
            "DHCP flood from port %s (host %s, ofport %d): over %d packets/s, its DHCP is "
            "dropped on the switch for %d s (offence %d)%s",
            port_id,
            host_id,
            pkt.in_port,
            self.guard.settings.max_pps,
            ban.seconds,
            ban.offence,
            "" if sent else "; the drop rule could not be sent, dropping here instead",
        )

    def status(self) -> dict[str, Any]:
        """Answers by message type and drops by reason, for the status document and metrics."""
        c = self.responder.counters
        return {
            "answers": {"offer": c.offers, "ack": c.acks, "nak": c.naks},
            "drops": {
                "malformed": c.malformed,
                "not_served": c.ignored,  # no address for it, DHCP off, another server's
                "unmatched": self.unmatched,  # no current port's punt rule explains it
                "flood": self.flooded,
            },
            "released": c.released,
            "options_left_out": c.options_left_out,
            "port_bans": self.bans,
            "port_ban_failures": self.ban_failures,
        }
