"""The pure DHCPv4 responder, bytes to bytes: every reply is parsed back by os-ken's parser and
checked field by field; hostile frames are counted and answered with nothing."""

from __future__ import annotations

import netaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp

from controller.services import dhcp as dhcp_server
from controller.services import dhcp_options as opt
from controller.services.dhcp import (
    ACK,
    DECLINE,
    DISCOVER,
    INFORM,
    NAK,
    OFFER,
    RELEASE,
    REQUEST,
    DhcpNetwork,
    DhcpOpt,
    DhcpPort,
    DhcpResponder,
    DhcpSettings,
    DhcpSubnet,
    server_address,
)

MAC = "fa:16:3e:00:00:05"
SUBNET = DhcpSubnet(
    id="s1",
    cidr="10.0.0.0/24",
    gateway_ip="10.0.0.1",
    dns_nameservers=("192.0.2.53",),
    host_routes=(("172.16.0.0/12", "10.0.0.254"),),
)
NETWORK = DhcpNetwork(mtu=1450, subnets=(SUBNET,))
PORT = DhcpPort(mac=MAC, fixed_ips=(("s1", "10.0.0.5"),))
SETTINGS = DhcpSettings(lease_time=3600, domain_name="tenant.example")


def client_frame(
    msg_type: int,
    mac: str = MAC,
    requested: str | None = None,
    server_id: str | None = None,
    ciaddr: str = "0.0.0.0",
    flags: int = 0,
    xid: int = 0x1234ABCD,
    chaddr: str | None = None,
) -> bytes:
    options = [dhcp.option(opt.MESSAGE_TYPE, bytes([msg_type]))]
    if requested:
        options.append(dhcp.option(opt.REQUESTED_IP, netaddr.IPAddress(requested).packed))
    if server_id:
        options.append(dhcp.option(opt.SERVER_ID, netaddr.IPAddress(server_id).packed))
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=mac, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src=ciaddr, dst="255.255.255.255", proto=17))
    pkt.add_protocol(udp.udp(src_port=68, dst_port=67))
    pkt.add_protocol(
        dhcp.dhcp(
            op=dhcp.DHCP_BOOT_REQUEST,
            chaddr=chaddr or mac,
            xid=xid,
            flags=flags,
            ciaddr=ciaddr,
            options=dhcp.options(options),
        )
    )
    pkt.serialize()
    return bytes(pkt.data)


def parse(
    frame: bytes,
) -> tuple[ethernet.ethernet, ipv4.ipv4, udp.udp, dhcp.dhcp, dict[int, bytes]]:
    pkt = packet.Packet(frame)
    msg = pkt.get_protocol(dhcp.dhcp)
    options = {o.tag: bytes(o.value) for o in msg.options.option_list}
    return (
        pkt.get_protocol(ethernet.ethernet),
        pkt.get_protocol(ipv4.ipv4),
        pkt.get_protocol(udp.udp),
        msg,
        options,
    )


def respond(
    frame: bytes, port: DhcpPort | None = PORT, network: DhcpNetwork = NETWORK
) -> bytes | None:
    return DhcpResponder(SETTINGS).respond(frame, port, network)


def test_discover_gets_an_offer_with_every_option() -> None:
    reply = respond(client_frame(DISCOVER))
    assert reply is not None
    eth, ip, l4, msg, options = parse(reply)
    assert (eth.src, eth.dst) == (SETTINGS.server_mac, MAC)
    assert (ip.src, ip.dst, l4.src_port, l4.dst_port) == ("10.0.0.1", "10.0.0.5", 67, 68)
    assert msg.op == dhcp.DHCP_BOOT_REPLY and msg.xid == 0x1234ABCD and msg.chaddr == MAC
    assert msg.yiaddr == "10.0.0.5"
    assert options[opt.MESSAGE_TYPE] == bytes([OFFER])
    assert options[opt.SERVER_ID] == netaddr.IPAddress("10.0.0.1").packed
    assert options[opt.SUBNET_MASK] == netaddr.IPAddress("255.255.255.0").packed
    assert options[opt.ROUTER] == netaddr.IPAddress("10.0.0.1").packed
    assert options[opt.DNS_SERVERS] == netaddr.IPAddress("192.0.2.53").packed
    assert options[opt.MTU] == (1450).to_bytes(2, "big")
    assert options[opt.LEASE_TIME] == (3600).to_bytes(4, "big")
    assert options[opt.RENEWAL_T1] == (1800).to_bytes(4, "big")
    assert options[opt.REBINDING_T2] == (3150).to_bytes(4, "big")
    assert options[opt.DOMAIN_NAME] == b"tenant.example"
    # RFC 3442: 172.16/12 via .254 (2 significant octets), then the default route via gateway
    assert options[opt.CLASSLESS_ROUTES] == bytes([12, 172, 16, 10, 0, 0, 254, 0, 10, 0, 0, 1])


def test_request_for_the_right_address_is_acked_and_a_wrong_one_naked() -> None:
    responder = DhcpResponder(SETTINGS)
    ack = responder.respond(
        client_frame(REQUEST, requested="10.0.0.5", server_id="10.0.0.1"), PORT, NETWORK
    )
    assert ack is not None
    _, _, _, msg, options = parse(ack)
    assert options[opt.MESSAGE_TYPE] == bytes([ACK]) and msg.yiaddr == "10.0.0.5"
    nak = responder.respond(client_frame(REQUEST, requested="10.0.0.9"), PORT, NETWORK)
    assert nak is not None
    _, ip, _, msg, options = parse(nak)
    assert options[opt.MESSAGE_TYPE] == bytes([NAK]) and msg.yiaddr == "0.0.0.0"
    assert ip.dst == "255.255.255.255" and opt.LEASE_TIME not in options
    assert (responder.counters.acks, responder.counters.naks) == (1, 1)


def test_renewal_unicast_from_ciaddr_is_acked_to_ciaddr() -> None:
    reply = respond(client_frame(REQUEST, ciaddr="10.0.0.5"))
    assert reply is not None
    _, ip, _, msg, options = parse(reply)
    assert options[opt.MESSAGE_TYPE] == bytes([ACK])
    assert ip.dst == "10.0.0.5" and msg.ciaddr == "10.0.0.5"


def test_request_for_another_server_is_not_answered() -> None:
    assert respond(client_frame(REQUEST, requested="10.0.0.5", server_id="10.0.0.77")) is None


def test_broadcast_flag_gets_an_ip_broadcast() -> None:
    reply = respond(client_frame(DISCOVER, flags=0x8000))
    assert reply is not None
    assert parse(reply)[1].dst == "255.255.255.255"


def test_inform_gets_options_without_a_lease() -> None:
    reply = respond(client_frame(INFORM, ciaddr="10.0.0.5"))
    assert reply is not None
    _, ip, _, msg, options = parse(reply)
    assert options[opt.MESSAGE_TYPE] == bytes([ACK]) and msg.yiaddr == "0.0.0.0"
    assert ip.dst == "10.0.0.5"
    assert not {opt.LEASE_TIME, opt.RENEWAL_T1, opt.REBINDING_T2} & set(options)
    assert opt.ROUTER in options


def test_inform_gets_no_lease_time_even_from_a_ports_extra_options() -> None:
    """RFC 2131 4.3.5: the server MUST NOT send a lease expiration time in the ACK to an
    INFORM; a port's extra options used to put one there."""
    port = DhcpPort(
        mac=MAC,
        fixed_ips=(("s1", "10.0.0.5"),),
        extra_dhcp_opts=(DhcpOpt("lease-time", "600"), DhcpOpt("T1", "300")),
    )
    responder = DhcpResponder(SETTINGS)
    inform = responder.respond(client_frame(INFORM, ciaddr="10.0.0.5"), port, NETWORK)
    assert inform is not None
    assert not {opt.LEASE_TIME, opt.RENEWAL_T1, opt.REBINDING_T2} & set(parse(inform)[4])
    offer = responder.respond(client_frame(DISCOVER), port, NETWORK)
    assert offer is not None  # a lease's replies still take them
    assert parse(offer)[4][opt.LEASE_TIME] == (600).to_bytes(4, "big")
    assert responder.counters.options_left_out == 0


def test_inform_without_ciaddr_is_answered_to_broadcast_not_to_0_0_0_0() -> None:
    """An INFORM without ciaddr (broken or hostile client) used to be answered with IP
    destination 0.0.0.0, which no stack accepts."""
    reply = respond(client_frame(INFORM))
    assert reply is not None
    _, ip, _, msg, _ = parse(reply)
    assert ip.dst == "255.255.255.255" and msg.yiaddr == "0.0.0.0"


@pytest.mark.parametrize("kind", [RELEASE, DECLINE])
def test_release_and_decline_get_nothing(kind: int) -> None:
    responder = DhcpResponder(SETTINGS)
    assert responder.respond(client_frame(kind, ciaddr="10.0.0.5"), PORT, NETWORK) is None
    assert responder.counters.released == 1 and responder.counters.malformed == 0


def test_no_gateway_means_no_router_no_default_route_and_a_derived_server() -> None:
    subnet = DhcpSubnet(id="s1", cidr="10.0.0.0/24", gateway_ip=None)
    network = DhcpNetwork(mtu=1500, subnets=(subnet,))
    reply = respond(client_frame(DISCOVER), network=network)
    assert reply is not None
    _, ip, _, _, options = parse(reply)
    assert opt.ROUTER not in options and opt.CLASSLESS_ROUTES not in options
    assert opt.DNS_SERVERS not in options  # neither subnet nor settings name one
    assert server_address(subnet) == "10.0.0.254" == ip.src
    assert options[opt.SERVER_ID] == netaddr.IPAddress("10.0.0.254").packed


def test_default_dns_from_settings() -> None:
    subnet = DhcpSubnet(id="s1", cidr="10.0.0.0/24", gateway_ip="10.0.0.1")
    responder = DhcpResponder(DhcpSettings(dns_servers=("192.0.2.1", "192.0.2.2")))
    reply = responder.respond(client_frame(DISCOVER), PORT, DhcpNetwork(1500, (subnet,)))
    assert reply is not None
    assert parse(reply)[4][opt.DNS_SERVERS] == bytes([192, 0, 2, 1, 192, 0, 2, 2])


def test_extra_dhcp_opts_override_and_add() -> None:
    port = DhcpPort(
        mac=MAC,
        fixed_ips=(("s1", "10.0.0.5"),),
        extra_dhcp_opts=(
            DhcpOpt("mtu", "1400"),
            DhcpOpt("66", "tftp.example"),
            DhcpOpt("dns-server", "10.0.0.53,10.0.0.54"),
            DhcpOpt("router", ""),  # blank: no router option
            DhcpOpt("domain-search", "a.example,b.example"),
            DhcpOpt("mtu", "1280", ip_version=6),  # not for DHCPv4
            DhcpOpt("ntp-server", "not-an-ip"),  # left out, counted
            DhcpOpt("server-id-spoof", "x"),  # unknown name: ignored
            DhcpOpt("54", "10.9.9.9"),  # the server identifier is not overridable
        ),
    )
    responder = DhcpResponder(SETTINGS)
    reply = responder.respond(client_frame(DISCOVER), port, NETWORK)
    assert reply is not None
    options = parse(reply)[4]
    assert options[opt.MTU] == (1400).to_bytes(2, "big")
    assert options[66] == b"tftp.example"
    assert options[opt.DNS_SERVERS] == bytes([10, 0, 0, 53, 10, 0, 0, 54])
    assert opt.ROUTER not in options
    assert options[119] == b"\x01a\x07example\x00\x01b\x07example\x00"
    assert options[opt.SERVER_ID] == netaddr.IPAddress("10.0.0.1").packed
    assert 42 not in options and responder.counters.options_left_out == 1


def test_extra_options_are_bounded_to_one_frame() -> None:
    many = tuple(DhcpOpt(str(n), "x" * 200) for n in range(160, 200))
    port = DhcpPort(mac=MAC, fixed_ips=(("s1", "10.0.0.5"),), extra_dhcp_opts=many)
    responder = DhcpResponder(SETTINGS)
    reply = responder.respond(client_frame(DISCOVER), port, NETWORK)
    assert reply is not None and len(reply) <= 1514
    assert responder.counters.options_left_out > 0


def test_a_subnet_whose_routes_or_dns_outgrow_one_option_is_still_answered() -> None:
    """The store takes 100 host routes and DNS servers; 30 /24 routes or 64 servers are more
    than one option's 255 bytes.  os-ken's struct.error used to escape `respond`, so no port of
    the subnet got DHCP at all."""
    subnet = DhcpSubnet(
        id="s1",
        cidr="10.0.0.0/24",
        gateway_ip="10.0.0.1",
        dns_nameservers=tuple(f"192.0.2.{i}" for i in range(1, 71)),
        host_routes=tuple((f"172.16.{i}.0/24", "10.0.0.254") for i in range(40)),
    )
    responder = DhcpResponder(SETTINGS)
    reply = responder.respond(client_frame(DISCOVER), PORT, DhcpNetwork(1450, (subnet,)))
    assert reply is not None
    msg, options = parse(reply)[3:]
    assert msg.yiaddr == "10.0.0.5"
    assert opt.CLASSLESS_ROUTES not in options  # left out whole: the client uses option 3
    assert options[opt.ROUTER] == netaddr.IPAddress("10.0.0.1").packed
    assert len(options[opt.DNS_SERVERS]) == 63 * 4  # the first 63 servers
    assert responder.counters.options_left_out == 2


@pytest.mark.parametrize(
    ("port", "network", "frame"),
    [
        (None, NETWORK, client_frame(DISCOVER)),  # unknown port
        (PORT, NETWORK, client_frame(DISCOVER, mac="fa:16:3e:00:00:99")),  # not the port's MAC
        (
            DhcpPort(MAC, (("s1", "10.0.0.5"),), admin_state_up=False),
            NETWORK,
            client_frame(DISCOVER),
        ),
        (DhcpPort(MAC, ()), NETWORK, client_frame(DISCOVER)),  # no fixed IP
        (DhcpPort(MAC, (("other", "10.1.0.5"),)), NETWORK, client_frame(DISCOVER)),
        (
            PORT,
            DhcpNetwork(1500, (DhcpSubnet("s1", "10.0.0.0/24", "10.0.0.1", enable_dhcp=False),)),
            client_frame(DISCOVER),
        ),
        (
            DhcpPort(MAC, (("s6", "2001:db8::5"),)),
            DhcpNetwork(1500, (DhcpSubnet("s6", "2001:db8::/64", None),)),
            client_frame(DISCOVER),
        ),
        (PORT, NETWORK, client_frame(OFFER)),  # a server message from a VM
    ],
)
def test_nothing_for_ports_that_get_no_answer(
    port: DhcpPort | None, network: DhcpNetwork, frame: bytes
) -> None:
    responder = DhcpResponder(SETTINGS)
    assert responder.respond(frame, port, network) is None
    assert responder.counters.ignored == 1 and responder.counters.malformed == 0


def test_second_subnet_of_a_port_and_dhcp_off_on_the_first() -> None:
    off = DhcpSubnet("s0", "10.5.0.0/24", "10.5.0.1", enable_dhcp=False)
    network = DhcpNetwork(1500, (off, SUBNET))
    port = DhcpPort(MAC, (("s0", "10.5.0.7"), ("s1", "10.0.0.5")))
    reply = respond(client_frame(DISCOVER), port, network)
    assert reply is not None and parse(reply)[3].yiaddr == "10.0.0.5"


def _malformed_frames() -> list[bytes]:
    good = client_frame(DISCOVER)
    spoofed_chaddr = client_frame(DISCOVER, chaddr="fa:16:3e:00:00:99")
    no_type = bytearray(good)
    no_type[14 + 20 + 8 + 240] = 0xFF  # end option where the message type was
    bad_cookie = bytearray(good)
    bad_cookie[14 + 20 + 8 + 236] = 0
    return [
        b"",
        b"\x00" * 13,
        good[:60],
        good[: 14 + 20 + 8 + 100],
        bytes(no_type),
        bytes(bad_cookie),
        spoofed_chaddr,
        good[:14] + b"\x46" + good[15:],  # IHL 6 with no options
        b"\xff" * 20000,
    ]


@pytest.mark.parametrize("frame", _malformed_frames())
def test_malformed_frames_are_counted_never_raised(frame: bytes) -> None:
    responder = DhcpResponder(SETTINGS)
    assert responder.respond(frame, PORT, NETWORK) is None
    assert responder.counters.malformed == 1


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=600),
    st.integers(min_value=0, max_value=400),
)
def test_random_bytes_and_mutations_never_raise(noise: bytes, cut: int) -> None:
    responder = DhcpResponder(SETTINGS)
    good = client_frame(REQUEST, requested="10.0.0.5")
    for frame in (noise, good[:cut] + noise, good[: 14 + 20 + 8 + 240] + noise):
        reply = responder.respond(frame, PORT, NETWORK)
        if reply is not None:
            parse(reply)  # whatever we answer is well-formed DHCP


def test_replies_follow_every_change_of_the_facts_they_were_worked_out_from() -> None:
    """One responder (its per-port cache warm) answers each renewal from the facts it is given
    now: a changed MTU, DNS server, gateway, extra option, address or admin state shows in the
    very next reply, and the old facts' answer comes back unchanged when they do."""
    responder = DhcpResponder(SETTINGS)

    def ack(port: DhcpPort, network: DhcpNetwork) -> tuple[str, dict[int, bytes]] | None:
        reply = responder.respond(client_frame(REQUEST, ciaddr="10.0.0.5"), port, network)
        if reply is None:
            return None
        _, _, _, msg, options = parse(reply)
        return msg.yiaddr, options

    first = ack(PORT, NETWORK)
    assert first is not None and first[1][opt.MTU] == (1450).to_bytes(2, "big")
    moved = DhcpSubnet("s1", "10.0.0.0/24", "10.0.0.254", dns_nameservers=("192.0.2.99",))
    changed = ack(PORT, DhcpNetwork(mtu=1400, subnets=(moved,)))
    assert changed is not None
    assert changed[1][opt.MTU] == (1400).to_bytes(2, "big")
    assert changed[1][opt.DNS_SERVERS] == netaddr.IPAddress("192.0.2.99").packed
    assert changed[1][opt.ROUTER] == changed[1][opt.SERVER_ID] == bytes([10, 0, 0, 254])
    with_opt = DhcpPort(MAC, PORT.fixed_ips, extra_dhcp_opts=(DhcpOpt("mtu", "1300"),))
    assert (ack(with_opt, NETWORK) or ("", {}))[1][opt.MTU] == (1300).to_bytes(2, "big")
    readdressed = DhcpPort(MAC, (("s1", "10.0.0.6"),))
    nak = ack(readdressed, NETWORK)  # the client renews the address it no longer has
    assert nak is not None and nak[1][opt.MESSAGE_TYPE] == bytes([NAK])
    offer = responder.respond(client_frame(DISCOVER), readdressed, NETWORK)
    assert offer is not None and parse(offer)[3].yiaddr == "10.0.0.6"
    assert ack(DhcpPort(MAC, PORT.fixed_ips, admin_state_up=False), NETWORK) is None
    assert ack(PORT, NETWORK) == first


def test_a_ports_options_are_encoded_once_not_per_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """The options of a port's OFFER, ACK and INFORM ACK are encoded (by os-ken) when its plan
    is worked out; a renewal after that encodes no option, and each reply still carries its
    own xid, flags, ciaddr and message type with the plan's options.  Counted: calls of
    os-ken's option encoder."""
    responder = DhcpResponder(SETTINGS)
    encoded = [0]
    encode = dhcp.option.serialize

    def counting(self: dhcp.option) -> bytes:
        encoded[0] += 1
        return encode(self)  # type: ignore[no-any-return]

    renewals = [
        client_frame(REQUEST, ciaddr="10.0.0.5", xid=x, flags=f)
        for x, f in ((1, 0), (2, 0x8000), (3, 0))
    ]
    informing = client_frame(INFORM, ciaddr="10.0.0.5", xid=4)
    monkeypatch.setattr(dhcp.option, "serialize", counting)
    offer = responder.respond(client_frame(DISCOVER), PORT, NETWORK)
    after_plan = encoded[0]
    replies = [responder.respond(frame, PORT, NETWORK) for frame in renewals]
    inform = responder.respond(informing, PORT, NETWORK)
    assert encoded[0] == after_plan > 0
    assert offer is not None and inform is not None and None not in replies
    offer_options = parse(offer)[4]
    assert offer_options[opt.MESSAGE_TYPE] == bytes([OFFER])
    for xid, reply in enumerate(replies, start=1):
        _, ip, _, msg, options = parse(reply or b"")
        assert (msg.xid, msg.ciaddr, msg.yiaddr) == (xid, "10.0.0.5", "10.0.0.5")
        assert msg.flags == (0x8000 if xid == 2 else 0)
        assert ip.dst == ("255.255.255.255" if xid == 2 else "10.0.0.5")
        assert options == {**offer_options, opt.MESSAGE_TYPE: bytes([ACK])}
    _, _, _, msg, options = parse(inform)
    assert (msg.xid, msg.yiaddr, options[opt.MESSAGE_TYPE]) == (4, "0.0.0.0", bytes([ACK]))
    assert opt.LEASE_TIME not in options and opt.LEASE_TIME in offer_options


def test_the_per_port_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dhcp_server, "PLAN_CACHE_SIZE", 4)
    responder = DhcpResponder(SETTINGS)
    for last in range(2, 12):
        port = DhcpPort(MAC, (("s1", f"10.0.0.{last}"),))
        assert responder.respond(client_frame(DISCOVER), port, NETWORK) is not None
    assert len(responder._plans) == 4


def test_the_per_port_cache_evicts_the_least_recently_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port renewing all the time keeps its plan while ports that stopped asking are evicted."""
    monkeypatch.setattr(dhcp_server, "PLAN_CACHE_SIZE", 3)
    responder = DhcpResponder(SETTINGS)
    busy = DhcpPort(MAC, (("s1", "10.0.0.2"),))
    for last in range(3, 10):
        assert responder.respond(client_frame(DISCOVER), busy, NETWORK) is not None
        port = DhcpPort(MAC, (("s1", f"10.0.0.{last}"),))
        assert responder.respond(client_frame(DISCOVER), port, NETWORK) is not None
        assert (busy, NETWORK) in responder._plans, f"evicted after 10.0.0.{last}"
    assert len(responder._plans) == 3


def packet_reply(reply: bytes) -> bytes:
    """The same reply built the way every reply was before the header cache: os-ken's
    ``Packet`` of Ethernet, IPv4, UDP and the DHCP message, all serialised at once."""
    eth, ip, _, msg, _ = parse(reply)
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=eth.dst, src=eth.src, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src=ip.src, dst=ip.dst, proto=17, ttl=64))
    pkt.add_protocol(udp.udp(src_port=67, dst_port=68))
    pkt.add_protocol(msg)
    pkt.serialize()
    return bytes(pkt.data)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([DISCOVER, REQUEST, INFORM]),
            st.integers(0, 0xFFFFFFFF),
            st.sampled_from([0, 0x8000, 0x0001]),
            st.sampled_from(["0.0.0.0", "10.0.0.5", "10.0.0.77"]),
        ),
        min_size=2,
        max_size=8,
    )
)
def test_replies_with_cached_headers_are_os_kens_whole_frame_byte_for_byte(
    asks: list[tuple[int, int, int, str]],
) -> None:
    """Each reply's Ethernet and IPv4 headers come from the responder's cache after the first
    reply to the same client, destination and length; every reply, first or cached, is the
    frame os-ken's ``Packet`` builds for the same fields (the UDP checksum follows each xid,
    flags and ciaddr; the IPv4 destination follows the broadcast flag and ciaddr)."""
    responder = DhcpResponder(SETTINGS)
    for kind, xid, flags, ciaddr in asks:
        reply = responder.respond(client_frame(kind, xid=xid, flags=flags, ciaddr=ciaddr),
                                  PORT, NETWORK)  # fmt: skip
        assert reply is not None
        assert reply == packet_reply(reply)
        _, _, _, msg, options = parse(reply)
        nak = options[opt.MESSAGE_TYPE] == bytes([NAK])  # a NAK's ciaddr is always 0.0.0.0
        assert (msg.xid, msg.flags, msg.ciaddr) == (xid, flags, "0.0.0.0" if nak else ciaddr)


def test_reply_headers_are_cached_per_destination_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Renewals from one client reuse one cached header; a broadcast one gets its own (another
    IPv4 destination); renewals from many addresses (ciaddr is the client's to choose) keep at
    most HEAD_CACHE_SIZE headers."""
    monkeypatch.setattr(dhcp_server, "HEAD_CACHE_SIZE", 4)
    responder = DhcpResponder(SETTINGS)
    for xid in range(5):
        assert responder.respond(client_frame(REQUEST, ciaddr="10.0.0.5", xid=xid), PORT, NETWORK)
    assert len(responder._heads) == 1
    assert responder.respond(client_frame(REQUEST, ciaddr="10.0.0.5", flags=0x8000), PORT, NETWORK)
    assert len(responder._heads) == 2
    for last in range(10, 30):  # NAKed (not the port's address), each to the broadcast address
        assert responder.respond(client_frame(REQUEST, ciaddr=f"10.0.0.{last}"), PORT, NETWORK)
    for last in range(10, 30):  # INFORMs are answered to their ciaddr: one header each
        assert responder.respond(client_frame(INFORM, ciaddr=f"10.0.0.{last}"), PORT, NETWORK)
    assert len(responder._heads) == 4


def test_the_ack_after_an_offer_is_built_with_the_offer_and_is_the_same_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DISCOVER's OFFER comes with the ACK for the REQUEST that follows (same xid, flags,
    ciaddr, facts) built ahead: that REQUEST builds nothing, and gets byte for byte what a
    responder that never saw the DISCOVER answers.  A retransmitted REQUEST, one with other
    flags, and one after the port's facts changed are built afresh (and so are right)."""
    builds = [0]
    build = DhcpResponder._build

    def counting(self: DhcpResponder, *args: object, **kwargs: object) -> bytes:
        builds[0] += 1
        return build(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DhcpResponder, "_build", counting)
    select = client_frame(REQUEST, requested="10.0.0.5", server_id="10.0.0.1", xid=77)
    responder = DhcpResponder(SETTINGS)
    assert responder.respond(client_frame(DISCOVER, xid=77), PORT, NETWORK) is not None
    assert builds[0] == 1  # the OFFER; its ACK once the replies are out
    responder.build_ahead()
    assert builds[0] == 2
    ack = responder.respond(select, PORT, NETWORK)
    assert builds[0] == 2
    assert ack == respond(select) and ack is not None
    assert parse(ack)[4][opt.MESSAGE_TYPE] == bytes([ACK])
    assert responder.counters.acks == 1 and responder.counters.offers == 1
    assert responder.respond(select, PORT, NETWORK) == ack  # retransmitted: built again
    assert builds[0] == 4  # (respond() above built one with its own responder)

    flagged = client_frame(REQUEST, requested="10.0.0.5", flags=0x8000, xid=78)
    responder.respond(client_frame(DISCOVER, xid=78), PORT, NETWORK)
    reply = responder.respond(flagged, PORT, NETWORK)
    assert reply == respond(flagged) and parse(reply or b"")[1].dst == "255.255.255.255"

    moved = DhcpNetwork(mtu=1400, subnets=NETWORK.subnets)
    responder.respond(client_frame(DISCOVER, xid=79), PORT, NETWORK)
    select = client_frame(REQUEST, requested="10.0.0.5", xid=79)
    reply = responder.respond(select, PORT, moved)
    assert reply == respond(select, PORT, moved)
    assert parse(reply or b"")[4][opt.MTU] == (1400).to_bytes(2, "big")


def test_acks_built_ahead_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """DISCOVERs that no REQUEST follows leave at most PREPARED_SIZE ACKs, the oldest out;
    and at most PREPARED_SIZE waiting to be built when nothing calls `build_ahead`."""
    monkeypatch.setattr(dhcp_server, "PREPARED_SIZE", 3)
    responder = DhcpResponder(SETTINGS)
    for xid in range(10):
        assert responder.respond(client_frame(DISCOVER, xid=xid), PORT, NETWORK) is not None
    assert [req.xid for req, _ in responder._ahead] == [7, 8, 9]
    responder.build_ahead()
    for xid in range(10, 20):
        assert responder.respond(client_frame(DISCOVER, xid=xid), PORT, NETWORK) is not None
        responder.build_ahead()
    assert not responder._ahead and len(responder._prepared) == 3
    assert sorted(key[1] for key in responder._prepared) == [17, 18, 19]
