"""A pure DHCPv4 server: one client frame and the store's facts in, one reply frame (or None) out.

Why pure: tenantnet answers DHCP from the store, statelessly (issue 15).  Nothing here does I/O,
keeps leases or looks anything up; the same question with the same facts always gets the same
answer, so a restarted controller answers a renewal exactly as before, and the whole protocol is
unit-testable from bytes to bytes.  Parsing and building are os-ken's (``os_ken.lib.packet``:
ethernet, ipv4, udp, dhcp); option payloads are encoded in `controller.services.dhcp_options`.

Server address scheme (stable and derivable from the store alone, nothing allocated):

* **MAC**: one fixed, locally administered MAC for every network (``DhcpSettings.server_mac``,
  default ``02:7e:4e:00:00:01``, outside Neutron's ``fa:16:3e`` range).  Networks are separate
  L2 domains, so sharing it is as safe as OVN's per-deployment ``server_mac``.
* **IP** (the server identifier, option 54): the subnet's ``gateway_ip`` when it has one (what
  OVN's Neutron driver uses as ``server_id``), otherwise the subnet's last unicast address (the
  one before the broadcast).  It may belong to a port (e.g. a router interface later): that is
  harmless, because the data plane punts every UDP/67 frame a VM port sends, whatever its
  destination, and the ARP responder answers for the server address only when no port holds it.

How the data plane plugs this in (`controller.southbound` delivers packet-ins; the core owns
flows and views; this module stays pure):

* A *subnet-DHCP owner* (cookie kind 5, reserved in `flows.tables.OwnerKind`) or the port owner
  installs, for each local VM port of a network with a DHCP-enabled IPv4 subnet, a flow in the
  port-security table: ``in_port=P, udp, tp_src=68, tp_dst=67 ->
  controller`` (metered by the per-host packet-in meter), before the L2 tables, so broadcasts
  and unicast renewals to the server address never leave the host.
* The packet-in handler maps the packet-in's ``in_port`` (and metadata = network key) to the
  port record (`DhcpPort`) and its network (`DhcpNetwork`), calls `DhcpResponder.respond`, and
  sends the reply as a PACKET_OUT to that ``in_port``.  The port record comes from the port
  that owns ``in_port``, never from the frame: an unknown MAC or a chaddr that is not the port's
  MAC gets nothing.
* The ARP responder answers for `server_address` of each DHCP subnet with the server MAC, in the
  network owner's slice on every host of the network, one priority below a port's answers (a
  port holding the address wins), so that a client's unicast renewal finds the server.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import NamedTuple

import netaddr
from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp
from os_ken.lib.packet.ether_types import ETH_TYPE_IP
from os_ken.lib.packet.in_proto import IPPROTO_UDP

from controller.services import dhcp_options as opt
from controller.services.dhcp_records import (
    DEFAULT_SERVER_MAC,
    DhcpNetwork,
    DhcpOpt,
    DhcpPort,
    DhcpSettings,
    DhcpSubnet,
    server_address,
)

__all__ = [
    "DEFAULT_SERVER_MAC",
    "DhcpCounters",
    "DhcpNetwork",
    "DhcpOpt",
    "DhcpPort",
    "DhcpResponder",
    "DhcpSettings",
    "DhcpSubnet",
    "server_address",
]

LOG = logging.getLogger(__name__)

CLIENT_PORT = 68
SERVER_PORT = 67
BROADCAST_FLAG = 0x8000
MAX_FRAME = 16384
"""Bigger frames are not DHCP any client sends; refused before parsing."""
PLAN_CACHE_SIZE = 4096
"""Ports whose replies' content is kept worked out (`DhcpResponder._plan`); the least recently
used is forgotten first.  A few hundred bytes each."""
HEAD_CACHE_SIZE = 4096
"""Reply headers kept (`DhcpResponder._head`: one per client MAC, server and destination
address and reply length); the oldest is forgotten first.  About 150 bytes each."""
PREPARED_SIZE = 1024
"""ACKs waiting to be built, and ACKs built ahead, for the REQUEST that follows a DISCOVER
(`DhcpResponder._prepare_ack`); the oldest is forgotten first.  About 400 bytes each."""
OPTIONS_BUDGET = 1200
"""Bytes of options a reply may carry: a reply must fit one 1500-byte frame (RFC 2131 servers
must not exceed the client's maximum message size, at least 576; clients that boot VMs accept a
full frame).  Extra options that would exceed it are left out and counted."""

MAX_OPTION_LEN = 255
"""An option's longest value (one length byte; no RFC 3396 long options here).  A standard option
the store's facts make longer is left out and counted (`DhcpResponder._options`)."""

NOT_OVERRIDABLE = frozenset({0, 50, 52, 53, 54, 255})
"""Options that frame the protocol itself (message type, server identifier, requested address,
overload, pad/end): an extra option cannot replace them."""

LEASE_OPTIONS = frozenset({opt.LEASE_TIME, opt.RENEWAL_T1, opt.REBINDING_T2})
"""The lease's times: never in the ACK to an INFORM, not even as a port's extra option."""

# message types (RFC 2132 section 9.6)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8


@dataclass
class DhcpCounters:
    """What the responder saw (exported as metrics by the caller)."""

    malformed: int = 0
    ignored: int = 0  # well-formed but not ours to answer (no address, DHCP off, other server)
    offers: int = 0
    acks: int = 0
    naks: int = 0
    released: int = 0  # RELEASE and DECLINE: nothing to answer, nothing kept
    options_left_out: int = 0


class _Request(NamedTuple):
    """What a client asked (a tuple: built for every message, on the answer's path)."""

    client_mac: str
    msg_type: int
    xid: int
    flags: int
    ciaddr: str
    requested_ip: str | None
    server_id: str | None


@dataclass(frozen=True, eq=False)
class _Plan:
    """What every reply to one port says, worked out once from its facts: the lease and the
    options (address and route encodings, extra options) that the same facts always give,
    encoded once per reply type: only the fixed header (xid, flags, addresses) differs from one
    reply to the next.  Compared and hashed by identity: a plan stands for the facts it was
    worked out from (the key it is cached under), and a key holding it keeps it alive."""

    subnet: DhcpSubnet
    address: str
    server_ip: str
    offer: bytes  # os-ken's encoding of the OFFER's options (see `_encoded_options`)
    ack: bytes  # ... of the ACK's
    lease_left_out: int  # extra options that did not fit or encode, per reply
    inform_ack: bytes  # ... of the ACK to an INFORM: no lease times
    inform_left_out: int


_WANTED = (opt.MESSAGE_TYPE, opt.REQUESTED_IP, opt.SERVER_ID)
"""The request's options the answer depends on."""


def _option_values(request: dhcp.dhcp) -> dict[int, bytes]:
    """The first value of each of the `_WANTED` options the request carries, in one pass."""
    found: dict[int, bytes] = {}
    for o in request.options.option_list:
        if isinstance(o, dhcp.option) and o.tag in _WANTED and o.tag not in found:
            found[o.tag] = bytes(o.value)
    return found


def _parse(frame: bytes) -> _Request | None:
    """The client message in ``frame``, or None when it is not a well-formed DHCP request."""
    if len(frame) > MAX_FRAME:
        return None
    # os-ken's parsers one layer at a time (what `packet.Packet` does for any frame), each only
    # once the one before said what follows: the punt rule sends IPv4 UDP 68 -> 67 alone.
    eth, _, rest = ethernet.ethernet.parser(frame)
    if eth.ethertype != ETH_TYPE_IP:
        return None
    ip, _, rest = ipv4.ipv4.parser(rest)
    if ip.proto != IPPROTO_UDP:
        return None
    l4, _, rest = udp.udp.parser(rest)
    if l4.dst_port != SERVER_PORT or l4.src_port != CLIENT_PORT:
        return None
    msg, _, _ = dhcp.dhcp.parser(rest)
    if msg.options is None:
        return None
    if msg.op != dhcp.DHCP_BOOT_REQUEST or msg.htype != 1 or msg.hlen != 6:
        return None
    if msg.options.magic_cookie != dhcp.options._MAGIC_COOKIE:
        return None
    if not isinstance(msg.chaddr, str) or msg.chaddr != eth.src or msg.giaddr != "0.0.0.0":
        return None  # relayed or spoofed: tenantnet serves on-link clients only
    values = _option_values(msg)
    kind = values.get(opt.MESSAGE_TYPE)
    if kind is None or len(kind) != 1:
        return None
    requested = values.get(opt.REQUESTED_IP)
    server = values.get(opt.SERVER_ID)
    if (requested is not None and len(requested) != 4) or (server is not None and len(server) != 4):
        return None
    return _Request(
        client_mac=msg.chaddr,
        msg_type=kind[0],
        xid=msg.xid,
        flags=msg.flags,
        ciaddr=msg.ciaddr,
        requested_ip=None if requested is None else socket.inet_ntoa(requested),
        server_id=None if server is None else socket.inet_ntoa(server),
    )


def _lease_for(port: DhcpPort, network: DhcpNetwork) -> tuple[DhcpSubnet, str] | None:
    """The port's first IPv4 address in a DHCP-enabled subnet, with that subnet."""
    subnets = {s.id: s for s in network.subnets}
    for subnet_id, address in port.fixed_ips:
        subnet = subnets.get(subnet_id)
        if subnet is None or not subnet.enable_dhcp:
            continue
        if netaddr.IPNetwork(subnet.cidr).version == 4:
            return subnet, address
    return None


class DhcpResponder:
    """Answers DHCPv4 client messages; holds settings, counters and the replies' content worked
    out per port (`_plan`).

    Why a cache, and why it cannot go stale: working a reply's options out of a port's facts
    (netmask, addresses, routes, extra options, each through an address parser) cost about as
    much as parsing the request and building the frame together, and a renewing VM asks the
    same question every time.  The cache is keyed by the facts themselves (`DhcpPort`,
    `DhcpNetwork`: frozen records the data plane derives from the store's current state for
    every packet), so a change to the port, its network or a subnet is a new key and gets a
    fresh plan; the old entry is simply never asked for again and is evicted as the least
    recently used.  Settings are fixed for the responder's life.
    """

    def __init__(self, settings: DhcpSettings | None = None) -> None:
        self._settings = settings or DhcpSettings()
        self.counters = DhcpCounters()
        self._plans: dict[tuple[DhcpPort, DhcpNetwork], _Plan | None] = {}
        self._heads: dict[tuple[str, str, str, int], tuple[bytes, ipv4.ipv4]] = {}
        self._prepared: dict[tuple[_Plan, int, int, str], bytes] = {}
        self._ahead: list[tuple[_Request, _Plan]] = []  # ACKs to build (`build_ahead`)

    @property
    def settings(self) -> DhcpSettings:
        return self._settings

    def respond(self, frame: bytes, port: DhcpPort | None, network: DhcpNetwork) -> bytes | None:
        """The reply frame to send back to the port, or None.  Never raises for any input."""
        try:
            request = _parse(frame)
        except Exception:  # os-ken's parsers raise anything on hostile bytes
            request = None
        if request is None:
            self.counters.malformed += 1
            return None
        try:
            return self._answer(request, port, network)
        except (opt.BadValue, netaddr.AddrFormatError, ValueError):
            # store data that does not encode (the store validates, so: a bug, not input)
            LOG.warning("DHCP: cannot answer %s: unencodable subnet or option", request.client_mac)
            self.counters.ignored += 1
            return None

    def _answer(self, req: _Request, port: DhcpPort | None, net: DhcpNetwork) -> bytes | None:
        if req.msg_type in (RELEASE, DECLINE):
            self.counters.released += 1
            return None
        plan = None
        if port is not None and port.admin_state_up and port.mac == req.client_mac:
            plan = self._plan(port, net)
        if port is None or plan is None or req.msg_type not in (DISCOVER, REQUEST, INFORM):
            self.counters.ignored += 1
            return None
        address, server_ip = plan.address, plan.server_ip
        if req.msg_type == REQUEST:
            if req.server_id is not None and req.server_id != server_ip:
                self.counters.ignored += 1  # the client chose another server's offer
                return None
            wanted = req.requested_ip or (req.ciaddr if req.ciaddr != "0.0.0.0" else None)
            if wanted != address:
                self.counters.naks += 1
                nak = _encoded_options(NAK, ((opt.SERVER_ID, opt.ipv4(server_ip)),))
                return self._build(req, "0.0.0.0", server_ip, nak, broadcast=True)
        reply_type = OFFER if req.msg_type == DISCOVER else ACK
        if req.msg_type == REQUEST:
            if self._ahead:  # a DISCOVER's ACK not built yet: it may be this one's
                self.build_ahead()
            ready = self._prepared.pop((plan, req.xid, req.flags, req.ciaddr), None)
            if ready is not None:
                self.counters.options_left_out += plan.lease_left_out
                self.counters.acks += 1
                return ready
        if req.msg_type == INFORM:
            options, left_out = plan.inform_ack, plan.inform_left_out
        elif reply_type == OFFER:
            options, left_out = plan.offer, plan.lease_left_out
        else:
            options, left_out = plan.ack, plan.lease_left_out
        self.counters.options_left_out += left_out
        if reply_type == OFFER:
            self.counters.offers += 1
        else:
            self.counters.acks += 1
        yiaddr = "0.0.0.0" if req.msg_type == INFORM else address
        reply = self._build(req, yiaddr, server_ip, options, broadcast=False)
        if req.msg_type == DISCOVER:
            if len(self._ahead) >= PREPARED_SIZE:
                del self._ahead[0]
            self._ahead.append((req, plan))
        return reply

    def build_ahead(self) -> None:
        """Build the ACKs for the REQUESTs that the DISCOVERs answered since the last call
        will bring (`_prepare_ack`).

        Why not while answering the DISCOVER: that build (~0.1 ms on cold CPU caches, stamps
        in the running controller) held the OFFER back.  The packet-in queue calls this once
        the replies are written (`controller.southbound.packet_in`: the handler's
        ``after_replies``), when the caches are still warm from the OFFER's build; a REQUEST
        answered before that (a handler used alone) builds them first.  Never raises for
        facts that do not encode (they would not have given an OFFER)."""
        ahead, self._ahead = self._ahead, []
        for req, plan in ahead:
            try:
                self._prepare_ack(req, plan)
            except (opt.BadValue, netaddr.AddrFormatError, ValueError):
                continue

    def _prepare_ack(self, req: _Request, plan: _Plan) -> None:
        """Build the ACK that the REQUEST following this DISCOVER will get (`build_ahead`).

        Why: a client's REQUEST comes 10-40 ms after the OFFER, and by then the CPU caches are
        taken by the rest of the host, so building the ACK then costs several times what it
        costs right after the OFFER was built (microbenchmark: ~0.15 ms after 30 ms idle, ~0.03
        ms warm), on the answer the client waits for.  The ACK is what `_answer` builds for a
        REQUEST: it depends only on the facts, the xid, the flags and ciaddr (a REQUEST that
        passed `_answer`'s checks - our server id, the port's address - gets the plan's ACK
        options and address), so it is kept under the plan (the facts: `_plan` returns the same
        plan object for the same facts while it is cached) and exactly those, and used once; a
        REQUEST with anything else, or facts that changed meanwhile, misses and is built as
        before.
        Bounded (`PREPARED_SIZE`, oldest out): a DISCOVER that no REQUEST follows costs one
        build and an entry that ages out."""
        key = (plan, req.xid, req.flags, req.ciaddr)
        if len(self._prepared) >= PREPARED_SIZE:
            del self._prepared[next(iter(self._prepared))]
        self._prepared[key] = self._build(req, plan.address, plan.server_ip, plan.ack, False)

    def _plan(self, port: DhcpPort, net: DhcpNetwork) -> _Plan | None:
        """The port's plan (None: no address to lease), from the cache or worked out now.
        Raises what `_options` raises for facts that do not encode (not cached then)."""
        key = (port, net)
        if key in self._plans:  # a cached plan may be None (no address to lease)
            cached = self._plans.pop(key)
            self._plans[key] = cached  # used last: eviction takes the least recently used
            return cached
        lease = _lease_for(port, net)
        plan = None
        if lease is not None:
            subnet, address = lease
            server_ip = server_address(subnet)
            with_lease, lease_left_out = self._options(port, subnet, net, server_ip, lease=True)
            inform, inform_left_out = self._options(port, subnet, net, server_ip, lease=False)
            plan = _Plan(
                subnet,
                address,
                server_ip,
                _encoded_options(OFFER, with_lease),
                _encoded_options(ACK, with_lease),
                lease_left_out,
                _encoded_options(ACK, inform),
                inform_left_out,
            )
        if len(self._plans) >= PLAN_CACHE_SIZE:
            del self._plans[next(iter(self._plans))]  # the least recently used entry
        self._plans[key] = plan
        return plan

    def _options(
        self, port: DhcpPort, subnet: DhcpSubnet, net: DhcpNetwork, server_ip: str, lease: bool
    ) -> tuple[tuple[tuple[int, bytes], ...], int]:
        """Standard options first, then the port's extra options replace or add by number;
        and how many extra options were left out (did not encode or fit)."""
        cidr = netaddr.IPNetwork(subnet.cidr)
        routes = [(r[0], r[1]) for r in subnet.host_routes]
        if subnet.gateway_ip and not any(netaddr.IPNetwork(d).prefixlen == 0 for d, _ in routes):
            routes.append(("0.0.0.0/0", subnet.gateway_ip))
        chosen: dict[int, bytes] = {opt.SUBNET_MASK: cidr.netmask.packed}
        if subnet.gateway_ip:
            chosen[opt.ROUTER] = opt.ipv4(subnet.gateway_ip)
        dns = subnet.dns_nameservers or self.settings.dns_servers
        left_out = 0
        if len(dns) > MAX_OPTION_LEN // 4:  # the store takes up to 100; clients use a few
            dns, left_out = dns[: MAX_OPTION_LEN // 4], 1
        if dns:
            chosen[opt.DNS_SERVERS] = b"".join(opt.ipv4(d) for d in dns)
        if self.settings.domain_name:
            chosen[opt.DOMAIN_NAME] = self.settings.domain_name.encode("ascii")
        chosen[opt.MTU] = opt.encode(opt.MTU, str(net.mtu))
        if routes:
            chosen[opt.CLASSLESS_ROUTES] = opt.classless_routes(routes)
        if lease:
            seconds = self.settings.lease_time
            chosen[opt.LEASE_TIME] = opt.encode(opt.LEASE_TIME, str(seconds))
            chosen[opt.RENEWAL_T1] = opt.encode(opt.RENEWAL_T1, str(seconds // 2))
            chosen[opt.REBINDING_T2] = opt.encode(opt.REBINDING_T2, str(seconds * 7 // 8))
        for too_long in [n for n, v in chosen.items() if len(v) > MAX_OPTION_LEN]:
            # Too long for one option (e.g. 30 host routes: the store takes 100): os-ken cannot
            # frame it (struct.error), which escaped `respond` and left every port of the
            # subnet without DHCP.  Left out whole, not cut: a partial route list would route
            # silently wrong, and without option 121 the client uses option 3 (the gateway).
            del chosen[too_long]
            left_out += 1
        used = sum(2 + len(v) for v in chosen.values())
        for extra in port.extra_dhcp_opts:
            number = opt.option_number(extra.name)
            if extra.ip_version != 4 or number is None or number in NOT_OVERRIDABLE:
                continue
            if not lease and number in LEASE_OPTIONS:
                continue  # RFC 2131 4.3.5: an ACK to an INFORM MUST NOT carry a lease time
            if extra.value == "":  # "send none" (router, classless-static-route)
                used -= 2 + len(chosen.pop(number, b"")) if number in chosen else 0
                continue
            try:
                value = opt.encode(number, extra.value)
            except opt.BadValue:
                left_out += 1
                continue
            after = used - (2 + len(chosen[number]) if number in chosen else 0) + 2 + len(value)
            if not 0 < len(value) <= MAX_OPTION_LEN or after > OPTIONS_BUDGET:
                left_out += 1
                continue
            chosen[number], used = value, after
        return ((opt.SERVER_ID, opt.ipv4(server_ip)), *sorted(chosen.items())), left_out

    def _build(
        self, req: _Request, yiaddr: str, server_ip: str, options: bytes, broadcast: bool
    ) -> bytes:
        """The reply frame: server MAC/IP to the client's MAC; IP broadcast when the client
        asked for it (or for a NAK), else unicast to the address it gets or has.  ``options``
        are the reply's options as os-ken encoded them (`_encoded_options`): os-ken's options
        class serialises an entry that is bytes as those bytes, after the magic cookie.

        Every byte is os-ken's: the DHCP message and the UDP header (its checksum covers the
        message) are serialised per reply; the Ethernet and IPv4 headers, which depend only on
        the addresses and the message's length, come from `_head`."""
        message = dhcp.dhcp(
            op=dhcp.DHCP_BOOT_REPLY,
            chaddr=req.client_mac,
            xid=req.xid,
            flags=req.flags,
            ciaddr="0.0.0.0" if broadcast else req.ciaddr,  # only a NAK is always broadcast
            yiaddr=yiaddr,
            options=dhcp.options([options]),
        )
        if broadcast or req.flags & BROADCAST_FLAG:
            ip_dst = "255.255.255.255"
        elif req.ciaddr != "0.0.0.0":
            ip_dst = req.ciaddr
        elif yiaddr != "0.0.0.0":
            ip_dst = yiaddr
        else:  # an INFORM without its ciaddr: 0.0.0.0 is no destination (RFC 1122 3.2.1.3)
            ip_dst = "255.255.255.255"
        payload = message.serialize()
        head, ip = self._head(req.client_mac, server_ip, ip_dst, payload)
        l4 = udp.udp(src_port=SERVER_PORT, dst_port=CLIENT_PORT)
        return head + l4.serialize(payload, ip) + payload

    def _head(
        self, client_mac: str, server_ip: str, ip_dst: str, payload: bytes
    ) -> tuple[bytes, ipv4.ipv4]:
        """The Ethernet and IPv4 headers of a reply carrying ``payload`` (a serialised DHCP
        message), as os-ken serialises them, and the IPv4 header object (the UDP checksum's
        pseudo header is taken from it).

        Why cached: a cold packet-in answer (one every few ms, CPU caches taken by the rest of
        the host meanwhile) spent about a third of its build in these two headers and os-ken's
        ``Packet`` around them, and they are the same for every reply to a client: they depend
        only on the two MACs, the two addresses and the length of what follows (the IPv4 total
        length and header checksum; no identification, TTL 64).  The xid, flags and addresses
        of the message change the UDP checksum only, which is computed per reply.  On a miss
        the whole frame is built by os-ken's ``Packet`` and its first two headers kept, so a hit
        returns exactly what ``Packet`` returned for them (tested byte for byte)."""
        key = (client_mac, server_ip, ip_dst, len(payload))
        hit = self._heads.get(key)
        if hit is not None:
            return hit
        ip = ipv4.ipv4(src=server_ip, dst=ip_dst, proto=IPPROTO_UDP, ttl=64)
        frame = packet.Packet()
        frame.add_protocol(
            ethernet.ethernet(dst=client_mac, src=self.settings.server_mac, ethertype=ETH_TYPE_IP)
        )
        frame.add_protocol(ip)
        frame.add_protocol(udp.udp(src_port=SERVER_PORT, dst_port=CLIENT_PORT))
        frame.add_protocol(payload)
        frame.serialize()
        head = bytes(frame.data[: ethernet.ethernet._MIN_LEN + ip.header_length * 4])
        if len(self._heads) >= HEAD_CACHE_SIZE:
            del self._heads[next(iter(self._heads))]  # the oldest entry
        self._heads[key] = (head, ip)
        return head, ip


def _encoded_options(reply_type: int, options: tuple[tuple[int, bytes], ...]) -> bytes:
    """A reply's options serialised by os-ken (message type first, then ``options``, then the
    end option), without the magic cookie os-ken puts before them: what `_build` hands back to
    os-ken's options class, once per plan and reply type rather than once per reply."""
    encoded = dhcp.options(
        [dhcp.option(opt.MESSAGE_TYPE, bytes([reply_type]))]
        + [dhcp.option(tag, value) for tag, value in options]
    ).serialize()
    return bytes(encoded[len(opt.ipv4(dhcp.options._MAGIC_COOKIE)) :])
