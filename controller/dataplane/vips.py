"""Virtual IPs learnt from ARP: which port holds an allowed-address-pair address now.

VRRP pairs (keepalived) and load balancers put one virtual IP (VIP) in the allowed address
pairs of two or more ports; whichever holds it announces it with a gratuitous ARP, or answers
ARP for it.  Bridged traffic finds the holder by ARP (the address is not the ARP responder's:
it floods), but routed traffic is sent by the sender's hypervisor straight to a MAC
(`flows.routing`), so the router must know the holder, as OVN learns a virtual port's
``virtual-parent`` from its GARP.

The signal: a gratuitous ARP *sent by* port P for X (sender and target address X), X a
single-IPv4 address pair of P (not its fixed IP): what keepalived, Pacemaker and `arping -U`
send on taking an address over.  A rule above P's pair rule copies those to the controller
(`flows.compiler._pair_rules`; only those, limited by the host's packet-in meter: not P's
answers to its neighbours' requests, which another VM could drive at will) and forwards them
as before.  `VipLearner` checks the copy against the switch's word (`punt_source`: the rule is
a current port's, on the host holding it, from its ofport) and the frame (a gratuitous ARP
from the pair's MAC and address) and posts a claim to the data plane's actor.  There
`VipClaims` decides whether it is news (the mirror may lag the store: see its docstring) and
keeps it for the step's observation write (`Store.set_ports_observed`: ``ports.claim_vip``
moves the hold, the other port of the network that held it lets go, in one transaction), if
this instance owns P's host.  The port's record then carries the VIP (`PortRec.vips`) and
routing gives it a neighbour rule to P (its own owner: O(1) flow-mods per router host when the
holder changes).

Bounded: one pending claim per VIP (the latest), a move at most once a second per VIP
(`RECENT_S`: two ports announcing in turn cost one write a second), the repeats of a burst
of GARPs (keepalived sends five) not written again.  The copies share the host's packet-in
meter with its ports' DHCP, so a port that sends them faster than its budget (a `FloodGuard`
of its own, the DHCP guard's defaults: 20/s) gets, for a while that doubles per offence, a
drop of those gratuitous ARPs on its switch (`flows.compiler.arp_copy_guard_rule`, hard
timeout; a drop, so that one left behind never lets anything through): its neighbours' DHCP
is not starved, and its other ARPs still flow.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from os_ken.lib.packet import arp, ethernet

from controller.dataplane.dhcp import BanSender
from controller.dataplane.punt_source import PortPunts, from_port_rule
from controller.dataplane.state import Mirror, PortRec
from controller.services.dhcp_guard import PASS, Ban, FloodGuard
from controller.southbound.packet_in import PacketIn
from flows.compiler import arp_copy_guard_rule
from flows.vip_pairs import vip_pairs

LOG = logging.getLogger(__name__)

ETH_TYPE_ARP = 0x0806
RECENT_S = 1.0
"""A claim written this recently is not written again (its port event may not be back yet)."""
RECENT_MAX = 4096
"""Claims remembered as recent at most (older ones are forgotten first)."""

Claim = tuple[str, str, str, str]
"""(network id, virtual IP, the port that announced it, its host)."""


def claimable(port: PortRec) -> dict[str, str]:
    """The port's virtual IPs it may announce, with the MAC the frame must come from (port
    security checks it too): `flows.vip_pairs.vip_pairs` of its pairs, the rule
    `PortRec.vips` and the store's `claim_vip` apply as well."""
    return vip_pairs(port.pairs, port.fixed_ips)


def holds(port: PortRec, vip: str) -> bool:
    return any(ip == vip for ip, _ in port.vips)


class VipLearner:
    """The packet-in side (any thread): ARP copies of the ports' address-pair rules."""

    def __init__(
        self,
        source: PortPunts,
        post: Callable[[str, tuple[Any, ...]], None],
        guard: FloodGuard | None = None,
        send_ban: BanSender | None = None,
    ) -> None:
        self.source = source
        self.post = post
        # not ``guard or ...``: a guard that tracks no port yet has a length of 0
        self.guard = guard if guard is not None else FloodGuard()
        self.send_ban = send_ban
        self.claimed = 0  # posted to the actor (which decides whether it is news)
        self.held = 0  # of those, the mirror showed the port holding it already
        self.unmatched = 0  # not a current port's rule there, or an address it may not claim
        self.malformed = 0
        self.flooded = 0  # copies of a port over its budget, dropped
        self.bans = 0  # drop rules sent (one per VIP a banned port floods)
        self.ban_failures = 0  # such rules the switch could not be sent
        # (dpid, port number, VIP) -> when its drop rule expires (monotonic)
        self._banned_until: dict[tuple[int, int, str], float] = {}

    def handle(self, pkt: PacketIn) -> bool:
        """True if the packet-in is an ARP of a port-security rule (handled here, whatever
        came of it: no answer is ever sent), False for anything else (DHCP's).  Only the
        Ethernet header is parsed before that is known: a DHCP packet-in costs the DHCP path
        no second parse of its whole frame."""
        if not from_port_rule(pkt):
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
        if (mac is None or str(msg.dst_ip) != vip or eth.src.lower() != mac
                or str(msg.src_mac).lower() != mac):  # fmt: skip
            self.unmatched += 1  # not a gratuitous ARP for a VIP of the port (not the rule's)
            return None
        verdict = self.guard.admit(port.num)
        if verdict != PASS:
            self.flooded += 1
            self._ban(pkt, port, host_id, vip, mac, verdict)
            return None
        if holds(port, vip):
            self.held += 1  # the actor judges it against its own writes too (VipClaims)
        return (port.network_id, vip, port.id, host_id)

    def _ban(self, pkt: PacketIn, port: PortRec, host_id: str, vip: str, mac: str,
               verdict: str | Ban) -> None:  # fmt: skip
        """The port announces its VIPs faster than its budget: its switch drops its
        gratuitous ARPs for ``vip`` until its ban ends (its neighbours' DHCP shares the host's
        packet-in meter with these copies; the port's other ARPs still flow).  One rule per
        VIP the port floods during the ban, each sent once."""
        assert pkt.in_port is not None  # `PortPunts.sender` checked it
        now = time.monotonic()
        if isinstance(verdict, Ban):
            seconds, offence = verdict.seconds, verdict.offence
        else:
            seconds, offence = math.ceil(self.guard.banned_for(port.num)), 0
        key = (pkt.dpid, port.num, vip)
        if seconds < 1 or self._banned_until.get(key, 0.0) > now:
            return  # its rule is on the switch (or the ban is over: the next one judges)
        if len(self._banned_until) >= RECENT_MAX:
            self._banned_until = {k: u for k, u in self._banned_until.items() if u > now}
        self._banned_until[key] = now + seconds
        self.bans += 1
        rule = arp_copy_guard_rule(pkt.in_port, mac, vip, port.num)
        sent = self.send_ban is not None and self.send_ban(pkt.dpid, rule, seconds)
        if not sent:
            self.ban_failures += 1
        LOG.warning(
            "gratuitous ARP flood from port %s (host %s) for %s: over %d packets/s, those are "
            "dropped on its switch for %d s%s%s",
            port.id,
            host_id,
            vip,
            self.guard.settings.max_pps,
            seconds,
            f" (offence {offence})" if offence else "",
            "" if sent else "; the rule could not be sent, dropping the copies here instead",
        )

    def status(self) -> dict[str, int]:
        return {"claimed": self.claimed, "held": self.held, "unmatched": self.unmatched,
                "malformed": self.malformed, "flooded": self.flooded,
                "bans": self.bans, "ban_failures": self.ban_failures}  # fmt: skip


class VipClaims:
    """The actor's side: claims to write with the step's observations, one per VIP.

    The mirror may lag the store: a holder this side wrote a moment ago is not in it yet.  So
    "already holds it" is judged against that write while it is recent (`RECENT_S`), else the
    mirror, and against the claim pending: a VIP that moved away from a port in between is
    news when that port claims it back, whatever the mirror still says, and a move back
    before the move was written cancels it.  And a VIP moves at most once
    per `RECENT_S`: two ports announcing it in turn (a split brain, or a tenant driving it)
    cost one store write a second, not one per announcement; the latest claim waits for the
    next step that may write it (the actor ticks every second)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # (network, vip) -> (port, its host): to write
        self.out: dict[tuple[str, str], tuple[str, str]] = {}
        self._recent: dict[tuple[str, str], tuple[str, float]] = {}  # written: port, when
        self._clock = clock
        self.written = 0
        self.dropped = 0  # the port no longer may claim it, or holds it already

    def add(self, claim: Claim, mirror: Mirror, owns: Callable[[str], bool]) -> None:
        """Keep ``claim`` if it is still news: the port exists with the address as a pair,
        this instance acts for its host, and the port is not the holder (see the class)."""
        net_id, vip, port_id, host_id = claim
        port = mirror.ports.get(port_id)
        key = (net_id, vip)
        if (port is None or port.network_id != net_id or vip not in claimable(port)
                or not owns(host_id)):  # fmt: skip
            self.dropped += 1
            return
        pending, recent = self.out.get(key), self._recent.get(key)
        written = recent[0] if recent is not None and self._clock() - recent[1] < RECENT_S else None
        # the holder the store has (the last write of ours while its event may not be back,
        # else the mirror's), and the one this side is about to write
        holder = written if written is not None else (port_id if holds(port, vip) else None)
        if pending is not None and pending[0] != port_id and holder == port_id:
            del self.out[key]  # moved back before the move was written: nothing to write
        elif holder != port_id and (pending is None or pending[0] != port_id):
            self.out[key] = (port_id, host_id)

    def due(self) -> dict[tuple[str, str], tuple[str, str]]:
        """The pending claims that may be written now, each VIP's latest once its last move is
        `RECENT_S` old: ``{(network, vip): (port, its host)}``, what `take` then writes (empty:
        nothing to write).  The one walk of the pending claims a step makes."""
        now = self._clock()
        return {key: claim for key, claim in self.out.items() if self._may_move(key, claim[0], now)}

    def _may_move(self, key: tuple[str, str], port_id: str, now: float) -> bool:
        recent = self._recent.get(key)
        return recent is None or recent[0] == port_id or now - recent[1] >= RECENT_S

    def take(
        self,
        owns: Callable[[str], bool],
        due: dict[tuple[str, str], tuple[str, str]] | None = None,
    ) -> dict[tuple[str, str], str]:
        """The claims to write now (remembered as recent): ``due``, `due`'s answer of this
        step (asked here if not given); those of hosts this instance no longer acts for are
        dropped (their new owner's learner hears the next announcement)."""
        if due is None:
            due = self.due()
        now = self._clock()
        out: dict[tuple[str, str], str] = {}
        for key, (port_id, host_id) in due.items():
            if self.out.get(key) != (port_id, host_id):
                continue  # replaced or gone since ``due`` was asked
            del self.out[key]
            if not owns(host_id):
                self.dropped += 1
                continue
            out[key] = port_id
        if out:
            for key, port_id in out.items():
                self._recent.pop(key, None)
                self._recent[key] = (port_id, now)
            while len(self._recent) > RECENT_MAX:
                del self._recent[next(iter(self._recent))]
            self.written += len(out)
            LOG.info("virtual IPs moved: %s", ", ".join(
                f"{vip} -> port {pid}" for (_, vip), pid in sorted(out.items())))  # fmt: skip
        return out
