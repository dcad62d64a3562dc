"""Virtual IPs learnt from ARP: which port holds an allowed-address-pair address now.

VRRP pairs (keepalived) and load balancers put one virtual IP (VIP) in the allowed address
pairs of two or more ports; whichever holds it announces it with a gratuitous ARP, or answers
ARP for it.  Bridged traffic finds the holder by ARP (the address is not the ARP responder's:
it floods), but routed traffic is sent by the sender's hypervisor straight to a MAC
(`flows.routing`), so the router must know the holder, as OVN learns a virtual port's
``virtual-parent`` from its GARP.

The signal: an ARP *sent by* port P with sender address X, X a single-IPv4 address pair of P
(not its fixed IP).  P's port-security rule that allows that ARP also copies it to the
controller (`flows.compiler._pair_rules`; only those ARPs, limited by the host's packet-in
meter) and forwards it as before.  `VipLearner` checks the copy against the switch's word and
the mirror (the rule is a current port's, on the host holding it, from its ofport; the frame
is an ARP from the pair's MAC and address) and, only if P does not hold X yet, posts a claim
to the data plane's actor.  There `VipClaims` keeps it for the step's observation write
(`Store.set_ports_observed`: ``ports.claim_vip`` moves the hold, the other port of the network
that held it lets go, in one transaction), if this instance owns P's host.  The port's record
then carries the VIP (`PortRec.vips`) and routing gives it a neighbour rule to P (its own
owner: O(1) flow-mods per router host when the holder changes).

Bounded: one pending claim per VIP (the latest), the repeats of a burst of GARPs (keepalived
sends five) dropped while the write of the first is on its way back (`RECENT_S`), and nothing
written for a port that holds the VIP already.  The copies share the host's packet-in meter
with its ports' DHCP, so a port that sends them faster than its budget (a `FloodGuard` of its
own, the DHCP guard's defaults: 20/s) gets, for a while that doubles per offence, a rule on its
switch that forwards those ARPs without the copy (`flows.compiler.arp_copy_guard_rule`, hard
timeout): its neighbours' DHCP is not starved, and its ARPs still flow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import netaddr
from os_ken.lib.packet import arp, ethernet

from controller.dataplane.dhcp import BanSender
from controller.dataplane.punt_source import PortPunts
from controller.dataplane.state import Mirror, PortRec
from controller.services.dhcp_guard import DROP, Ban, FloodGuard
from controller.southbound.packet_in import PacketIn
from flows import tables as t
from flows.compiler import arp_copy_guard_rule

LOG = logging.getLogger(__name__)

ETH_TYPE_ARP = 0x0806
RECENT_S = 1.0
"""A claim written this recently is not written again (its port event may not be back yet)."""
RECENT_MAX = 4096
"""Claims remembered as recent at most (older ones are forgotten first)."""

Claim = tuple[str, str, str, str]
"""(network id, virtual IP, the port that announced it, its host)."""


def claimable(port: PortRec) -> dict[str, str]:
    """The port's virtual IPs it may announce: single-IPv4 address pairs that are not a fixed
    IP of it, with the pair's MAC (the frame must come from it: port security checks too; of
    several pairs of one address, the smallest MAC, the one its route takes: `PortRec.vips`)."""
    out: dict[str, str] = {}
    fixed = set(port.fixed_ips)
    for addr, mac in port.pairs:
        try:
            net = netaddr.IPNetwork(addr)
        except (ValueError, netaddr.AddrFormatError):
            continue
        ip = str(net.ip)
        if net.version == 4 and net.prefixlen == 32 and ip not in fixed:
            out.setdefault(ip, mac.lower())
    return out


def holds(port: PortRec, vip: str) -> bool:
    return any(ip == vip for ip, _ in port.vips)


class VipLearner:
    """The packet-in side (any thread): ARP copies of the ports' address-pair rules."""

    def __init__(
        self,
        source: PortPunts,
        post: Callable[[str, tuple[Any, ...]], None],
        guard: FloodGuard | None = None,
        send_quiet: BanSender | None = None,
    ) -> None:
        self.source = source
        self.post = post
        # not ``guard or ...``: a guard that tracks no port yet has a length of 0
        self.guard = guard if guard is not None else FloodGuard()
        self.send_quiet = send_quiet
        self.claimed = 0  # posted to the actor (the port did not hold the VIP)
        self.held = 0  # the port holds it already: nothing to do
        self.unmatched = 0  # not a current port's rule there, or an address it may not claim
        self.malformed = 0
        self.flooded = 0  # copies of a port over its budget, dropped
        self.quieted = 0  # offences (each one rule sent that forwards without the copy)
        self.quiet_failures = 0  # such rules the switch could not be sent

    def handle(self, pkt: PacketIn) -> bool:
        """True if the packet-in is an ARP of a port-security rule (handled here, whatever
        came of it: no answer is ever sent), False for anything else (DHCP's).  Only the
        Ethernet header is parsed before that is known: a DHCP packet-in costs the DHCP path
        no second parse of its whole frame."""
        if pkt.table_id != t.PORT_SECURITY or t.owner_kind(pkt.cookie) != t.OwnerKind.PORT:
            return False
        try:
            eth, _next, rest = ethernet.ethernet.parser(pkt.data)
        except Exception:  # os-ken raises anything on a truncated frame
            return False  # not an ARP as far as anyone can tell: DHCP's to judge
        if eth.ethertype != ETH_TYPE_ARP:
            return False
        try:
            msg, _, _ = arp.arp.parser(rest)
        except Exception:  # a truncated or odd ARP payload
            self.malformed += 1
            return True
        claim = self._claim(pkt, eth, msg)
        if claim is not None:
            self.claimed += 1
            self.post("vip_claim", claim)
        return True

    def _claim(self, pkt: PacketIn, eth: ethernet.ethernet, msg: arp.arp) -> Claim | None:
        sender = self.source.sender(pkt)
        if sender is None:
            self.unmatched += 1
            return None
        port, host_id = sender
        vip = str(msg.src_ip)
        mac = claimable(port).get(vip)
        if mac is None or eth.src.lower() != mac or str(msg.src_mac).lower() != mac:
            self.unmatched += 1
            return None
        verdict = self.guard.admit(port.num)
        if verdict == DROP or isinstance(verdict, Ban):
            self.flooded += 1
            if isinstance(verdict, Ban):
                self._quiet(pkt, port, host_id, vip, mac, verdict)
            return None
        if holds(port, vip):
            self.held += 1
            return None
        return (port.network_id, vip, port.id, host_id)

    def _quiet(self, pkt: PacketIn, port: PortRec, host_id: str, vip: str, mac: str,
               ban: Ban) -> None:  # fmt: skip
        """The port sends its ARPs from ``vip`` faster than its budget: its switch forwards
        them without the copy for ``ban.seconds`` (its neighbours' DHCP shares the host's
        packet-in meter with these copies; the ARPs themselves still flow)."""
        assert pkt.in_port is not None  # `PortPunts.sender` checked it
        self.quieted += 1
        rule = arp_copy_guard_rule(pkt.in_port, mac, vip, port.num)
        sent = self.send_quiet is not None and self.send_quiet(pkt.dpid, rule, ban.seconds)
        if not sent:
            self.quiet_failures += 1
        LOG.warning(
            "ARP flood from port %s (host %s) announcing %s: over %d packets/s, its copies to "
            "tenantnet stop for %d s (offence %d; the ARPs are still forwarded)%s",
            port.id,
            host_id,
            vip,
            self.guard.settings.max_pps,
            ban.seconds,
            ban.offence,
            "" if sent else "; the rule could not be sent, dropping the copies here instead",
        )

    def status(self) -> dict[str, int]:
        return {"claimed": self.claimed, "held": self.held, "unmatched": self.unmatched,
                "malformed": self.malformed, "flooded": self.flooded,
                "quieted": self.quieted, "quiet_failures": self.quiet_failures}  # fmt: skip


class VipClaims:
    """The actor's side: claims to write with the step's observations, one per VIP."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.out: dict[tuple[str, str], str] = {}  # (network, vip) -> port: to write
        self._recent: dict[tuple[str, str], tuple[str, float]] = {}  # written: port, when
        self._clock = clock
        self.written = 0
        self.dropped = 0  # the port no longer may claim it, or holds it already

    def add(self, claim: Claim, mirror: Mirror, owns: Callable[[str], bool]) -> None:
        """Keep ``claim`` if it is still news: the port exists with the address as a pair, does
        not hold it already, was not claimed for it within `RECENT_S`, and this instance acts
        for its host."""
        net_id, vip, port_id, host_id = claim
        port = mirror.ports.get(port_id)
        key = (net_id, vip)
        if (port is None or port.network_id != net_id or vip not in claimable(port)
                or holds(port, vip) or not owns(host_id)):  # fmt: skip
            self.dropped += 1
            return
        recent = self._recent.get(key)
        if recent is not None and recent[0] == port_id and self._clock() - recent[1] < RECENT_S:
            return
        self.out[key] = port_id

    def take(self) -> dict[tuple[str, str], str]:
        """The claims to write now (remembered as recent)."""
        out, self.out = self.out, {}
        if out:
            now = self._clock()
            for key, port_id in out.items():
                self._recent.pop(key, None)
                self._recent[key] = (port_id, now)
            while len(self._recent) > RECENT_MAX:
                del self._recent[next(iter(self._recent))]
            self.written += len(out)
            LOG.info("virtual IPs moved: %s", ", ".join(
                f"{vip} -> port {pid}" for (_, vip), pid in sorted(out.items())))  # fmt: skip
        return out
