"""TLS settings, certificate identities and switch admission (issue 10), without OVS.

Certificates come from ``ovs-pki`` (lab/pki.py), the tool the README tells operators
to use; the tests skip without it.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto.ofproto_protocol import ProtocolDesc

from controller import config, tls
from controller.dataplane.admission import Admission, management_addresses
from controller.southbound import ofp_app
from controller.southbound.ofp_app import TenantnetOfpApp
from controller.store import Store
from controller.store.errors import InvalidInput
from flows.model import Slice
from lab.pki import API_NAME, Pki
from tests.unit.conftest import new_ofp_app


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("ovs-pki") is None:
        pytest.skip("ovs-pki not installed (openvswitch-common)")
    return Pki.create(tmp_path_factory.mktemp("pki"), hosts=["hv1", "hv2"])


def _load(*argv: str) -> config.Settings:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return config.load(p.parse_args(list(argv)), environ={})


# ------------------------------------------------------------------------------------ settings


def test_tls_settings_give_ssl_targets(pki: Pki) -> None:
    s = _load(*pki.controller_args())
    assert s.ofp_tls and s.api_tls
    assert s.controller_target == "ssl:127.0.0.1:6653"
    assert s.ovsdb_tls_files == (pki.key("ctl"), pki.cert("ctl"), pki.switch_ca)


@pytest.mark.parametrize(
    ("drop", "word"),
    [("--ofp-tls-ca", "go together"), ("--api-tls-cert", "api_tls_key and api_tls_cert")],
)
def test_tls_files_go_together(pki: Pki, drop: str, word: str) -> None:
    args = list(pki.controller_args())
    i = args.index(drop)
    del args[i : i + 2]
    with pytest.raises(config.ConfigError, match=word):
        _load(*args)


def test_missing_or_broken_tls_file_named_at_start(pki: Pki, tmp_path: Path) -> None:
    args = list(pki.controller_args())
    missing = [*args, "--api-tls-ca", str(tmp_path / "nope.pem")]
    with pytest.raises(config.ConfigError, match=r"api_tls_ca: .*nope.pem does not exist"):
        _load(*missing)
    # a key that is not the certificate's: refused before anything listens
    wrong = list(args)
    wrong[wrong.index("--ofp-tls-key") + 1] = pki.key("hv1")
    with pytest.raises(config.ConfigError, match="ofp_tls_cert/ofp_tls_key"):
        _load(*wrong)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    bad_ca = list(args)
    bad_ca[bad_ca.index("--ofp-tls-ca") + 1] = str(garbage)
    with pytest.raises(config.ConfigError, match="ofp_tls_ca"):
        _load(*bad_ca)


def test_etcd_tls_files_are_loaded_at_start(pki: Pki, tmp_path: Path) -> None:
    """etcd's CA, certificate and key are loaded at start like the other channels' files: a CA
    that holds no certificate or a key that is not the certificate's is refused naming the
    setting.  Old code: only readability was checked, and the first etcd call failed as
    "etcd cluster ... unavailable", which reads as a network fault."""
    etcd = ["--store", "etcd://127.0.0.1:2379"]
    good = [*etcd, "--etcd-tls-ca", pki.controller_ca,
            "--etcd-tls-cert", pki.cert("ctl"), "--etcd-tls-key", pki.key("ctl")]  # fmt: skip
    assert _load(*good).etcd is not None
    assert _load(*etcd, "--etcd-tls-ca", pki.controller_ca).etcd is not None
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(config.ConfigError, match=r"^etcd_tls_ca: .*ca.pem unusable"):
        _load(*etcd, "--etcd-tls-ca", str(garbage))
    wrong = list(good)
    wrong[wrong.index("--etcd-tls-key") + 1] = pki.key("hv1")
    with pytest.raises(config.ConfigError, match=r"^etcd_tls_cert/etcd_tls_key"):
        _load(*wrong)


KEY_FLAGS = ("--ofp-tls-key", "--ovsdb-tls-key", "--api-tls-key", "--etcd-tls-key")


def _with_key(pki: Pki, flag: str, key: str) -> list[str]:
    """Settings that use ``key`` as the private key of ``flag``'s channel, all else valid."""
    if flag == "--etcd-tls-key":
        return ["--store", "etcd://127.0.0.1:2379", "--etcd-tls-ca", pki.controller_ca,
                "--etcd-tls-cert", pki.cert("ctl"), flag, key]  # fmt: skip
    args = list(pki.controller_args())
    if flag == "--ovsdb-tls-key":
        return [*args, flag, key, "--ovsdb-tls-cert", pki.cert("ctl"),
                "--ovsdb-tls-ca", pki.switch_ca]  # fmt: skip
    args[args.index(flag) + 1] = key
    return args


@pytest.mark.parametrize("flag", KEY_FLAGS)
@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660], ids=oct)
def test_a_tls_private_key_others_can_read_or_write_stops_the_start(
    pki: Pki, tmp_path: Path, flag: str, mode: int
) -> None:
    """A TLS private key is as secret as the API token: a key others can read (or write) is
    refused at start, naming the setting, the file and the fix, like a secret file.  The
    libraries open keys themselves, so only the path is checked.  0640 (a service group) is
    accepted, as for secret files.  Old code: any readable key was accepted."""
    key = tmp_path / "privkey.pem"
    key.write_bytes(Path(pki.key(API_NAME if flag == "--api-tls-key" else "ctl")).read_bytes())
    key.chmod(0o600)
    assert _load(*_with_key(pki, flag, str(key)))
    key.chmod(0o640)
    assert _load(*_with_key(pki, flag, str(key)))
    key.chmod(mode)
    setting = flag[2:].replace("-", "_")
    with pytest.raises(config.ConfigError) as refused:
        _load(*_with_key(pki, flag, str(key)))
    message = str(refused.value)
    assert message.startswith(f"{setting}: {key} is readable or writable by other users")
    assert f"chmod 600 {key}" in message


def test_a_tls_private_key_that_is_not_a_regular_file_is_refused(pki: Pki, tmp_path: Path) -> None:
    """A directory (or a pipe) named as a key stops the start with the setting named."""
    with pytest.raises(config.ConfigError, match=r"api_tls_key: .* is not a regular file"):
        _load(*_with_key(pki, "--api-tls-key", str(tmp_path)))


def test_tls_refuses_plain_advertise(pki: Pki) -> None:
    with pytest.raises(config.ConfigError, match="advertise"):
        _load(*pki.controller_args(), "--advertise", "tcp:192.0.2.1:6653")
    assert _load(*pki.controller_args(), "--advertise", "ssl:192.0.2.1:6653")


def test_ovsdb_tls_without_openflow_tls_refused(pki: Pki) -> None:
    with pytest.raises(config.ConfigError, match="ovsdb_tls"):
        _load("--ovsdb-tls-key", pki.key("ctl"))


# ------------------------------------------------------------------------------------ identity


def test_host_of_cn() -> None:
    assert tls.host_of_cn("hv1 id:3f0e6c1a-0000-4000-8000-000000000000") == "hv1"
    assert tls.host_of_cn("hv1") == "hv1"  # ovs-pki -u
    assert tls.host_of_cn("host one id:x") == "host one"


def _handshake(pki: Pki, client_cert: str | None) -> str | None:
    """A real mutual-TLS handshake on a socket pair; the server side's peer CN."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.cert("ctl"), pki.key("ctl"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(pki.switch_ca)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.load_verify_locations(pki.controller_ca)
    if client_cert:
        client_ctx.load_cert_chain(pki.cert(client_cert), pki.key(client_cert))
    a, b = socket.socketpair()
    seen: list[str | None] = []

    def serve() -> None:
        with server_ctx.wrap_socket(a, server_side=True) as s:
            seen.append(tls.peer_common_name(s))
            s.sendall(b"x")

    t = threading.Thread(target=serve)
    t.start()
    with client_ctx.wrap_socket(b) as c:
        c.recv(1)
    t.join(5)
    return seen[0]


def test_peer_common_name_is_the_verified_certificate(pki: Pki) -> None:
    cn = _handshake(pki, "hv2")
    assert cn is not None and tls.host_of_cn(cn) == "hv2"
    assert tls.peer_common_name(socket.socket()) is None  # plain TCP: no identity


def test_a_certificate_with_several_cns_names_no_host(pki: Pki) -> None:
    """``ovs-pki sign`` keeps a request's subject as it is: a certificate the switch CA signed
    with ``CN=hv1`` and ``CN=hv2`` was admitted as hv1 (its first CN), whichever host it was
    signed for.  It names no one host, so it proves none (like a certificate without a CN)."""
    name = "hv1-and-hv2"
    subject = "/C=US/ST=CA/L=Palo Alto/O=Open vSwitch/OU=Open vSwitch certifier/CN=hv1/CN=hv2"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", pki.key(name),
         "-out", str(pki.certs / f"{name}-req.pem"), "-subj", subject],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pki._ovs_pki("--batch", "sign", name, "switch")
    assert _handshake(pki, name) is None
    admission = Admission(tls=True)
    admission.set_host(1, {"id": "hv1", "ovsdb": "ssl:192.0.2.1:6640"})
    assert admission.check(1, "192.0.2.1", _handshake(pki, name)) is not None


class _Peer:
    def __init__(self, subject: tuple[tuple[tuple[str, str], ...], ...]) -> None:
        self.subject = subject

    def getpeercert(self) -> dict[str, Any]:
        return {"subject": self.subject}


def test_peer_common_name_needs_exactly_one_cn() -> None:
    org = (("organizationName", "Open vSwitch"),)
    assert tls.peer_common_name(_Peer((org, (("commonName", "hv1 id:x"),)))) == "hv1 id:x"
    assert tls.peer_common_name(_Peer((org,))) is None  # no CN
    two = (org, (("commonName", "hv1"),), (("commonName", "hv2"),))
    assert tls.peer_common_name(_Peer(two)) is None
    multi_valued = (org, (("commonName", "hv1"), ("commonName", "hv2")))  # one RDN, two CNs
    assert tls.peer_common_name(_Peer(multi_valued)) is None


# ------------------------------------------------------------------------------------ admission

HV1 = {"id": "hv1", "ovsdb": "tcp:192.0.2.1:6640"}


def test_management_addresses() -> None:
    assert management_addresses(HV1) == management_addresses({"mgmt_ip": "192.0.2.1"})
    assert {str(a) for a in management_addresses({"ovsdb": "ssl:[2001:db8::1]:6640"}) or ()} == {
        "2001:db8::1"
    }
    assert management_addresses({"ovsdb": "unix:/run/db.sock"}) is None
    explicit = {"ovsdb": "unix:/run/db.sock", "mgmt_ip": "192.0.2.7"}
    assert {str(a) for a in management_addresses(explicit) or ()} == {"192.0.2.7"}


def test_admission_without_tls_is_by_address() -> None:
    adm = Admission(tls=False, local_addresses={"198.51.100.10"})
    adm.set_host(1, HV1)
    adm.set_host(2, {"id": "hv2", "ovsdb": "unix:/run/db.sock"})
    assert adm.check(1, "192.0.2.1", None) is None
    assert adm.check(1, "::ffff:192.0.2.1", None) is None
    assert "192.0.2.1, not 192.0.2.66" in (adm.check(1, "192.0.2.66", None) or "")
    assert adm.check(2, "127.0.0.1", None) is None  # unix: = this machine
    assert adm.check(2, "198.51.100.10", None) is None
    assert "not this machine" in (adm.check(2, "192.0.2.1", None) or "")
    assert "registered" in (adm.check(3, "192.0.2.1", None) or "")
    adm.remove_host(1)
    assert "registered" in (adm.check(1, "192.0.2.1", None) or "")


def test_admission_with_tls_is_by_certificate() -> None:
    adm = Admission(tls=True)
    adm.set_host(1, HV1)
    assert adm.check(1, "203.0.113.5", "hv1 id:abc") is None  # any address, right certificate
    assert "does not name host hv1" in (adm.check(1, "192.0.2.1", "hv2 id:abc") or "")
    assert "no certificate with exactly one CN" in (adm.check(1, "192.0.2.1", None) or "")
    assert "registered" in (adm.check(2, "192.0.2.1", "hv1") or "")


# ------------------------------------------------------------------------------------ the app


class _Dp(ProtocolDesc):
    """What the app uses of an os-ken Datapath (OpenFlow 1.3 encoding, a socket, a state)."""

    def __init__(self, ip: str) -> None:
        super().__init__(version=ofp.OFP_VERSION)
        self.address = (ip, 40000)
        self.socket = socket.socket()
        self.is_active = True
        self.state = MAIN_DISPATCHER
        self.id = None
        self.sent: list[bytes] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.is_active = False
        self.state = DEAD_DISPATCHER

    def end(self, reason: str) -> None:
        """`LiveDatapath.end`: the socket is shut down and the connection's own thread then
        closes the datapath (done here at once)."""
        self.close()

    def send(self, buf: bytes) -> bool:
        self.sent.append(buf)
        return True

    def set_xid(self, msg: Any) -> None:
        msg.xid = 1


class _Listener:
    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.ready: list[int] = []

    def switch_ready(self, dpid: int, installed: Slice) -> None:
        self.ready.append(dpid)

    def switch_gone(self, dpid: int) -> None:
        pass

    def admit(self, dpid: int, peer_ip: str | None, peer_cn: str | None) -> str | None:
        return self.admission.check(dpid, peer_ip, peer_cn)


class _Ev:
    def __init__(self, dp: _Dp, dpid: int) -> None:
        self.msg = type("Msg", (), {"datapath": dp, "datapath_id": dpid})()


def _app() -> TenantnetOfpApp:
    app: TenantnetOfpApp = new_ofp_app()  # no os-ken event loop needed
    return app


def test_app_admits_before_it_accepts_and_never_displaces_a_live_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ofp_app, "SECOND_SESSION_WAIT_S", 3600)  # the test takes the second look
    app = _app()
    adm = Admission(tls=False)
    adm.set_host(7, HV1)
    real, impostor, twin = _Dp("192.0.2.1"), _Dp("192.0.2.99"), _Dp("192.0.2.1")
    app._features(_Ev(real, 7))  # before attach: decided when the data plane is there
    assert app.counters.connects == 0 and not real.closed
    listener = _Listener(adm)
    app.attach(listener)
    assert app.counters.connects == 1 and len(real.sent) == 1  # admitted, dump started
    app._features(_Ev(impostor, 7))
    assert impostor.closed and impostor.sent == [] and app.counters.refused == 1
    app._features(_Ev(twin, 7))  # right address, but hv1's session is alive: a second look...
    assert not twin.closed and twin.sent == [] and app._switches[7].dp is real
    app._admit_later(twin, 7)
    assert twin.closed and app.counters.refused == 2  # ...still alive: refused
    assert app._switches[7].dp is real and twin.sent == []
    # The switch replacing its own connection: the old one ends during the second look.
    successor = _Dp("192.0.2.1")
    app._features(_Ev(successor, 7))
    real.close()
    app._admit_later(successor, 7)
    assert not successor.closed and app._switches[7].dp is successor
    assert len(successor.sent) == 1  # admitted on the second look, its dump started
    real = successor
    real.close()  # the real switch's session dies; its reconnect gets in
    again = _Dp("192.0.2.1")
    app._features(_Ev(again, 7))
    assert not again.closed and app._switches[7].dp is again


def test_refusing_a_connection_never_waits_on_the_apps_own_event_queue() -> None:
    """A refusal runs on the app's os-ken event thread, the only consumer of its bounded
    queue.  os-ken's ``Datapath.close`` posts the DEAD state change to that queue and blocks
    while it is full (a burst of connections, or a peer opening many): refusing by ``close``
    there would wait for itself, and no switch would ever be admitted again.  The refusal
    only shuts the socket down; the connection's thread closes the datapath."""
    from os_ken.controller import ofp_event

    app = _app()
    adm = Admission(tls=False)
    adm.set_host(7, HV1)
    app.attach(_Listener(adm))

    class _OsKenDp(_Dp):
        def close(self) -> None:  # what os-ken's Datapath.close does for this app
            super().close()
            ev = ofp_event.EventOFPStateChange(self)
            ev.state = DEAD_DISPATCHER
            app._send_event(ev, DEAD_DISPATCHER)

        def end(self, reason: str) -> None:  # LiveDatapath.end: the socket only
            self.ended = reason

    for _ in range(app.events.maxsize):  # other connections' events queued behind this one
        ev = ofp_event.EventOFPStateChange(_Dp("192.0.2.50"))
        ev.state = DEAD_DISPATCHER
        app._send_event(ev, DEAD_DISPATCHER)
    bogus = _OsKenDp("192.0.2.99")
    t = threading.Thread(target=app._features, args=(_Ev(bogus, 7),), daemon=True)
    t.start()  # stands for the event thread handling the impostor's FEATURES
    t.join(2.0)
    blocked = t.is_alive()
    while not app.events.empty():  # unblock it, so that the test ends either way
        app.events.get()
        app._events_sem.release()
    t.join(2.0)
    assert not blocked, "the app's event thread blocked on its own full queue"
    assert bogus.ended.startswith("refused") and app.counters.refused == 1


# ------------------------------------------------------------------------------------ store


def test_host_ssl_target_and_mgmt_ip(store: Store) -> None:
    host = store.create_host({"id": "hv1", "tunnel_ip": "192.0.2.1", "ovsdb": "ssl:192.0.2.1:6640"})
    assert host["ovsdb"] == "ssl:192.0.2.1:6640" and host["mgmt_ip"] == ""
    local = store.create_host(
        {
            "id": "hv2",
            "tunnel_ip": "192.0.2.2",
            "ovsdb": "unix:/run/db.sock",
            "mgmt_ip": "192.0.2.20",
        }
    )
    assert local["mgmt_ip"] == "192.0.2.20"
    with pytest.raises(InvalidInput, match="mgmt_ip"):
        store.create_host({"id": "hv3", "tunnel_ip": "192.0.2.3", "mgmt_ip": "10.1"})
    with pytest.raises(InvalidInput, match="ovsdb"):
        store.create_host({"id": "hv3", "tunnel_ip": "192.0.2.3", "ovsdb": "tls:192.0.2.3:1"})


def test_cloudstack_registration_uses_ssl_targets_with_tls(make_client: Any) -> None:
    client = make_client(ovsdb_scheme="ssl")
    r = client.put("/controller/nb/v2/connectionmanager/node/OVS/hv9/address/192.0.2.9/port/6640")
    assert r.status_code == 200, r.text
    assert r.json()["host"]["ovsdb"] == "ssl:192.0.2.9:6640"
