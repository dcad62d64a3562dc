"""A minimal OpenFlow 1.3 client on a bridge's management socket (``<rundir>/<bridge>.mgmt``).

For tests that load compiled flows into a real OVS without a controller, through the same codec
the controller uses (``controller.southbound.ofp_codec`` + os-ken serialisation), and read them
back as flow stats, as the controller does after a reconnect.  Nothing here decides anything:
it sends, waits for the barrier, and reports OpenFlow errors as exceptions.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Any

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from os_ken.ofproto.ofproto_protocol import ProtocolDesc

from controller.southbound import ofp_codec as codec
from flows.model import Rule, Slice
from flows.readable import group_text, rule_text

DP = ProtocolDesc(version=ofp.OFP_VERSION)
ALL_COOKIES = 0


class OfpError(RuntimeError):
    pass


class MgmtClient:
    """Blocking OpenFlow session on a unix socket (``ovs-ofctl``'s way into a bridge)."""

    def __init__(self, path: str, timeout: float = 10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.xid = 0
        self.sent: dict[int, str] = {}  # xid -> what it carried, for error messages
        self._send(parser.OFPHello(DP))
        self._read()  # the switch's hello

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MgmtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        msg.serialize()
        self.sock.sendall(bytes(msg.buf))
        return self.xid

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OfpError("switch closed the connection")
            buf += chunk
        return buf

    def _read(self) -> Any:
        head = self._recv_exact(ofp.OFP_HEADER_SIZE)
        version, msg_type, length, xid = struct.unpack(ofp.OFP_HEADER_PACK_STR, head)
        body = self._recv_exact(length - ofp.OFP_HEADER_SIZE)
        return ofproto_parser.msg(DP, version, msg_type, length, xid, head + body)

    def _until_reply(self, xid: int, errors_from: int) -> list[Any]:
        """Messages up to the reply(s) with ``xid``; OpenFlow errors for any message sent
        since ``errors_from`` raise."""
        replies = []
        while True:
            msg = self._read()
            if isinstance(msg, parser.OFPErrorMsg) and msg.xid >= errors_from:
                what = self.sent.get(msg.xid, "?")
                raise OfpError(f"switch refused {what}: type {msg.type} code {msg.code}")
            if isinstance(msg, parser.OFPEchoRequest):
                self._send(parser.OFPEchoReply(DP, data=msg.data))
                continue
            if msg.xid == xid:
                replies.append(msg)
                if not getattr(msg, "flags", 0) & ofp.OFPMPF_REPLY_MORE:
                    return replies

    def send(self, msg: Any) -> int:
        """Send one message (its xid is returned); no wait."""
        return self._send(msg)

    def read(self) -> Any:
        """The next message from the switch (echo requests answered on the way)."""
        while True:
            msg = self._read()
            if not isinstance(msg, parser.OFPEchoRequest):
                return msg
            self._send(parser.OFPEchoReply(DP, data=msg.data))

    def send_all(self, msgs: list[Any]) -> None:
        """Send ``msgs``, then a barrier; raises OfpError if the switch refused any of them."""
        first = self.xid + 1
        for msg in msgs:
            self.sent[self._send(msg)] = type(msg).__name__
        self._until_reply(self._send(parser.OFPBarrierRequest(DP)), first)

    def install(self, state: Slice) -> None:
        """Delete every flow and group, then add ``state`` (groups first), up to a barrier."""
        first = self.xid + 1
        self._send(codec.delete_all_ours(DP, ALL_COOKIES, 0))
        self._send(parser.OFPGroupMod(DP, ofp.OFPGC_DELETE, ofp.OFPGT_ALL, ofp.OFPG_ALL, []))
        for g in sorted(state.groups):
            self.sent[self._send(codec.group_add(DP, g))] = group_text(g)
        for r in sorted(state.rules, key=repr):
            self.sent[self._send(codec.flow_add(DP, r))] = rule_text(r)
        self._until_reply(self._send(parser.OFPBarrierRequest(DP)), first)

    def dump_rules(self) -> frozenset[Rule]:
        """Every flow, decoded as the controller decodes a switch's flow-stats replies."""
        first = self.xid + 1
        xid = self._send(codec.flow_dump_request(DP, ALL_COOKIES, 0))
        return frozenset(
            codec.decode_flow_stats(stat)
            for reply in self._until_reply(xid, first)
            for stat in reply.body
        )

    def dump_state(self) -> Slice:
        """Every flow and group, decoded as the controller decodes a switch's replies."""
        first = self.xid + 1
        xid = self._send(codec.group_dump_request(DP))
        groups = frozenset(
            codec.decode_group_desc(g) for reply in self._until_reply(xid, first)
            for g in reply.body
        )  # fmt: skip
        return Slice(self.dump_rules(), groups)


_DPIF_PORT = re.compile(r"^    (\S+) (\d+)/(\d+):")


def odp_port_names(dpif_show: str, bridge: str, prefix: str, tunnel: str) -> dict[int, str]:
    """Datapath port number -> port name without ``prefix`` ("tunnel" for ``tunnel``), for
    reading ``ofproto/trace``'s "Datapath actions" (``ovs-appctl dpif/show`` text)."""
    odp: dict[int, str] = {}
    section = ""
    for line in dpif_show.splitlines():
        if line.startswith("  ") and line.strip().endswith(":") and not line.startswith("    "):
            section = line.strip()[:-1]
        m = _DPIF_PORT.match(line)
        if m and section == bridge and m.group(1).startswith(prefix):
            name = m.group(1)
            odp[int(m.group(3))] = "tunnel" if name == tunnel else name[len(prefix) :]
    return odp
