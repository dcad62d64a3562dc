"""A PKI made the way the README tells operators to: with OVS's own ``ovs-pki``.

    pki = Pki.create("/tmp/x", hosts=["hv1", "hv2", "hv3"])
    pki.controller_args()          # tenantnet serve flags for OpenFlow/OVSDB TLS (+ HTTPS API)
    pki.switch_files("hv1")        # (key, cert, CA) for `ovs-vsctl set-ssl` on hv1

Layout under ``root``: ``pki/`` is ``ovs-pki --dir`` (``controllerca/`` and ``switchca/``);
``certs/`` holds what ``ovs-pki req+sign`` writes in its working directory:
``ctl-*`` (the controller, type ``controller``), ``<host>-*`` per hypervisor (type ``switch``,
CN ``"<host> id:<uuid>"``) and ``localhost-*`` (the HTTPS API's certificate, ``-u`` so that the
name clients connect to, ``localhost``, is its CN and DNS subjectAltName); `add_ip_server` adds
a server certificate for an address (the lab etcd members': ``etcd-*``, IP 127.0.0.1).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from .proc import run

API_NAME = "localhost"
CONTROLLER_NAME = "ctl"


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def dir(self) -> Path:
        return self.root / "pki"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def switch_ca(self) -> str:
        """The CA that signed the switches' certificates (the controller verifies against it)."""
        return str(self.dir / "switchca" / "cacert.pem")

    @property
    def controller_ca(self) -> str:
        """The CA that signed the controller's (and the API's) certificate."""
        return str(self.dir / "controllerca" / "cacert.pem")

    def key(self, name: str) -> str:
        return str(self.certs / f"{name}-privkey.pem")

    def cert(self, name: str) -> str:
        return str(self.certs / f"{name}-cert.pem")

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, root: str | os.PathLike[str], hosts: list[str]) -> Pki:
        """``ovs-pki init``, then ``req+sign`` for the controller, the API and every host."""
        pki = cls(Path(root))
        pki.certs.mkdir(parents=True, exist_ok=True)
        pki._ovs_pki("init")
        pki._ovs_pki("req+sign", CONTROLLER_NAME, "controller")
        pki._ovs_pki("-u", "req+sign", API_NAME, "controller")
        for host in hosts:
            pki.add_switch(host)
        return pki

    def add_switch(self, host: str) -> None:
        """``ovs-pki req+sign <host> switch`` (no-op if that certificate exists)."""
        if not os.path.exists(self.cert(host)):
            self._ovs_pki("req+sign", host, "switch")

    def add_ip_server(self, name: str, ip: str) -> None:
        """A server certificate for the address ``ip`` (an IP subjectAltName), signed by the
        controller CA (no-op if it exists).

        ``ovs-pki req`` writes ``subjectAltName = DNS:<name>`` only, and a client that dials an
        address matches it against IP names alone (Python's ssl, RFC 6125): so the request
        is made with openssl (the fields ``ovs-pki`` would put in, the CA's policy matches the
        organization) and signed with ``ovs-pki sign``, which copies its extensions (the way
        ovs-pki signs any request made elsewhere)."""
        if os.path.exists(self.cert(name)):
            return
        subject = "/C=US/ST=CA/L=Palo Alto/O=Open vSwitch/OU=Open vSwitch certifier/CN=" + name
        run("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes",
            "-keyout", self.key(name), "-out", str(self.certs / f"{name}-req.pem"),
            "-subj", subject, "-addext", f"subjectAltName = IP:{ip}", timeout=120)  # fmt: skip
        self._ovs_pki("--batch", "sign", name, "controller")

    def _ovs_pki(self, *args: str) -> None:
        # req+sign writes its files into the working directory, hence cd.
        script = 'cd "$1" && shift && exec ovs-pki "$@"'
        run("sh", "-c", script, "sh", str(self.certs), f"--dir={self.dir}",
            f"--log={self.root / 'ovs-pki.log'}", *args, timeout=120)

    # ------------------------------------------------------------------ use
    def switch_files(self, host: str) -> tuple[str, str, str]:
        """What ``ovs-vsctl set-ssl`` takes on host: its key, its certificate, the controller CA."""
        return self.key(host), self.cert(host), self.controller_ca

    def controller_args(self, api: bool = True) -> tuple[str, ...]:
        """``tenantnet serve`` flags: mutual TLS on OpenFlow and OVSDB, the SSL record written on
        hosts (``{host}`` = host id), and HTTPS for the API."""
        args: tuple[str, ...] = (
            "--ofp-tls-key", self.key(CONTROLLER_NAME),
            "--ofp-tls-cert", self.cert(CONTROLLER_NAME),
            "--ofp-tls-ca", self.switch_ca,
            "--switch-ssl-key", str(self.certs / "{host}-privkey.pem"),
            "--switch-ssl-cert", str(self.certs / "{host}-cert.pem"),
            "--switch-ssl-ca", self.controller_ca,
        )  # fmt: skip
        if api:
            args += ("--api-tls-key", self.key(API_NAME), "--api-tls-cert", self.cert(API_NAME))
        return args

    def client_context(self, cert_name: str | None = None) -> ssl.SSLContext:
        """An HTTPS client context that verifies the API's certificate (and presents
        ``cert_name``'s certificate if given)."""
        ctx = ssl.create_default_context(cafile=self.controller_ca)
        if cert_name is not None:
            ctx.load_cert_chain(self.cert(cert_name), self.key(cert_name))
        return ctx
