"""A misbehaving OpenFlow 1.3 switch for fault-injection tests, speaking through os-ken's codec.

It completes the handshake the way OVS does (HELLO, FEATURES_REPLY with the datapath id it is
told to claim, an empty port description), answers echo requests, and answers the controller's
flow and group dumps with empty tables.  What it does with the flow-mods and barriers that follow
is the fault:

* ``"silent"``: it takes everything and never answers a barrier (a wedged or malicious switch);
* ``"errors"``: it rejects every flow-mod, group-mod and bundle message with an OFPT_ERROR, then
  answers the barrier (a switch that refuses what it is sent);
* ``"mute"``: it completes the handshake and then answers nothing at all, echoes included (a
  frozen switch whose kernel still holds the connection open);
* ``"obedient"``: it takes everything and answers barriers - an impostor claiming someone
  else's datapath id, which a controller that accepted it would send that host's flows.

With ``tls`` (an SSL client context) it speaks OpenFlow over TLS.  ``python -m
lab.fake_switch HOST:PORT DPID_HEX MODE [--tls KEY CERT CA] [--seconds S]`` runs one
for ``S`` seconds (inside a namespace with ``ip netns exec``, to connect from a hypervisor's
address) and prints what happened as JSON: ``{"handshake": "ok" | error, "closed": bool,
"sent_features": bool, "received": [message type names]}``.

os-ken implements serialisation for requests, not for the replies a switch sends, so the reply
bodies are packed with os-ken's own layout strings (``ofproto_v1_3.*_PACK_STR``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import ssl
import struct
import sys
import threading
from collections import Counter

from os_ken.ofproto import ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

MODES = ("silent", "errors", "mute", "obedient")
_REJECTED = {ofp.OFPT_FLOW_MOD, ofp.OFPT_GROUP_MOD, ofp.OFPT_EXPERIMENTER}


class FakeSwitch:
    def __init__(
        self,
        controller: tuple[str, int],
        dpid: int,
        mode: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.controller = controller
        self.dpid = dpid
        self.mode = mode
        self.tls = tls
        self.features_sent = False
        self.dp = ofproto_protocol.ProtocolDesc(version=ofp.OFP_VERSION)
        self.sock: socket.socket | None = None
        self.received: Counter[int] = Counter()  # message type -> count
        self.handshake_done = threading.Event()
        self.closed_by_peer = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> FakeSwitch:
        self.sock = socket.create_connection(self.controller, timeout=5)
        if self.tls is not None:
            self.sock = self.tls.wrap_socket(self.sock)
        self.sock.settimeout(0.2)
        self._send_raw(self._header(ofp.OFPT_HELLO, 0))
        self._thread = threading.Thread(target=self._run, name="fake-switch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()

    # ------------------------------------------------------------------------------ protocol

    def _run(self) -> None:
        buf = b""
        assert self.sock is not None
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            buf += data
            while len(buf) >= ofp.OFP_HEADER_SIZE:
                _, msg_type, msg_len, xid = ofproto_parser.header(buf)
                if len(buf) < msg_len:
                    break
                raw, buf = buf[:msg_len], buf[msg_len:]
                self.received[msg_type] += 1
                self._answer(msg_type, xid, raw)
        if not self._stop.is_set():
            self.closed_by_peer.set()

    def _answer(self, msg_type: int, xid: int, raw: bytes) -> None:
        if self.mode == "mute" and self.handshake_done.is_set():
            return
        if msg_type == ofp.OFPT_ECHO_REQUEST:
            self._send_raw(self._header(ofp.OFPT_ECHO_REPLY, xid, raw[ofp.OFP_HEADER_SIZE :]))
        elif msg_type == ofp.OFPT_FEATURES_REQUEST:
            body = struct.pack(ofp.OFP_SWITCH_FEATURES_PACK_STR, self.dpid, 0, 254, 0, 0, 0)
            self._send_raw(self._header(ofp.OFPT_FEATURES_REPLY, xid, body))
            self.features_sent = True
        elif msg_type == ofp.OFPT_MULTIPART_REQUEST:
            (mp_type,) = struct.unpack_from("!H", raw, ofp.OFP_HEADER_SIZE)
            body = struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, mp_type, 0)
            self._send_raw(self._header(ofp.OFPT_MULTIPART_REPLY, xid, body))
            if mp_type == ofp.OFPMP_PORT_DESC:
                self.handshake_done.set()  # the controller moves to MAIN on this reply
        elif msg_type == ofp.OFPT_BARRIER_REQUEST:
            if self.mode in ("errors", "obedient"):
                self._send_raw(self._header(ofp.OFPT_BARRIER_REPLY, xid))
        elif msg_type in _REJECTED and self.mode == "errors":
            err = parser.OFPErrorMsg(
                self.dp, type_=ofp.OFPET_BAD_REQUEST, code=ofp.OFPBRC_EPERM, data=raw[:64]
            )
            err.xid = xid
            err.serialize()
            self._send_raw(bytes(err.buf))

    @staticmethod
    def _header(msg_type: int, xid: int, body: bytes = b"") -> bytes:
        return (
            struct.pack(
                ofp.OFP_HEADER_PACK_STR,
                ofp.OFP_VERSION,
                msg_type,
                ofp.OFP_HEADER_SIZE + len(body),
                xid,
            )
            + body
        )

    def _send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        with contextlib.suppress(OSError):
            self.sock.sendall(data)


TYPE_NAMES = {getattr(ofp, n): n[len("OFPT_") :] for n in dir(ofp) if n.startswith("OFPT_")}


def client_context(key: str | None, cert: str | None, ca: str) -> ssl.SSLContext:
    """TLS as a switch speaks it: verify the controller against ``ca``; present ``cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # vswitchd checks the CA only, too
    ctx.load_verify_locations(ca)
    if key and cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a fake OpenFlow switch for a while.")
    ap.add_argument("addr", help="controller HOST:PORT")
    ap.add_argument("dpid", help="datapath id to claim (hex)")
    ap.add_argument("mode", choices=MODES)
    ap.add_argument("--tls", nargs=3, metavar=("KEY", "CERT", "CA"),
                    help="TLS with this key and certificate ('-' '-': none), the controller "
                    "verified against CA")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    host, _, port = args.addr.rpartition(":")
    tls = None
    if args.tls:
        key, cert, ca = args.tls
        tls = client_context(None if key == "-" else key, None if cert == "-" else cert, ca)
    fake = FakeSwitch((host, int(port)), int(args.dpid, 16), args.mode, tls)
    out: dict[str, object] = {"handshake": "ok"}
    try:
        fake.start()
    except OSError as exc:  # ssl.SSLError included: refused during the TLS handshake
        out["handshake"] = f"{type(exc).__name__}: {exc}"
        fake.closed_by_peer.set()
    else:
        fake.closed_by_peer.wait(args.seconds)
        fake.stop()
    out["closed"] = fake.closed_by_peer.is_set()
    out["sent_features"] = fake.features_sent
    out["received"] = [TYPE_NAMES.get(t, str(t)) for t in sorted(fake.received)]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
