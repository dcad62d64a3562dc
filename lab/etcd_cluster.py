"""A real etcd cluster (Debian's ``etcd-server``) of N members on free loopback ports.

The tests of the etcd store backend and, later, the HA scenarios run tenantnet against this
cluster: real Raft, real quorum loss when members are stopped, real HTTP gateway that etcd3gw
talks to.  Each member has its own data directory under the given temporary directory; every
process started here is stopped by `stop` (and only those: they are tracked by pid).

With ``tls=True`` the members serve their clients over https only (``--cert-file``/``--key-file``,
certificates from OVS's ``ovs-pki`` CA as the southbound TLS tests make theirs: `lab.pki`), under
a certificate that names the address they listen on, 127.0.0.1 (an IP subjectAltName: clients
dial that address, and verify it); peers stay on plain http (loopback, and no client setting
depends on them).  `client_settings` gives the matching `EtcdSettings` (the CA set).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.pki import Pki
from lab.tenantnet_proc import DIRECT, free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
HOST = "127.0.0.1"  # where members listen and clients dial (with TLS: the certificate's IP)
CERT_NAME = "etcd"  # the members' certificate in the `Pki` (`Pki.add_ip_server`)


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"


@dataclass
class EtcdCluster:
    """``start`` brings up every member and waits until the cluster has a leader."""

    root: Path
    size: int = 3
    members: list[Member] = field(default_factory=list)
    # more etcd flags for every member (e.g. ``--auth-token-ttl``)
    extra_args: list[str] = field(default_factory=list)
    # clients talk https to every member (certificates from ovs-pki, `lab.pki`)
    tls: bool = False
    pki: Pki | None = None

    def __post_init__(self) -> None:
        token = f"tenantnet-{os.getpid()}-{free_port()}"
        self.token = token
        ports: list[int] = []
        while len(ports) < 2 * self.size:  # the kernel may hand the same free port out twice
            if (port := free_port()) not in ports:
                ports.append(port)
        for i in range(self.size):
            name = f"m{i}"
            client, peer = ports[2 * i], ports[2 * i + 1]
            self.members.append(
                Member(name, client, peer, self.root / name, self.root / f"{name}.log")
            )

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ca(self) -> str:
        """The CA file clients verify the members' certificate with ("" without TLS)."""
        return self.pki.controller_ca if self.pki is not None else ""

    def http(self, member: Member, path: str, body: dict[str, Any] | None = None) -> Any:
        """``GET`` (or ``POST`` ``body``) ``path`` on one member; its JSON answer.  Over https
        with TLS, verifying the member's certificate."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.scheme}://{member.endpoint}{path}", data=data)
        opener = DIRECT
        if self.pki is not None:
            context = ssl.create_default_context(cafile=self.ca)
            https = urllib.request.HTTPSHandler(context=context)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), https)
        with opener.open(request, timeout=5) as resp:
            return json.loads(resp.read())

    def client_settings(self, **settings: Any) -> Any:
        """`EtcdSettings` for a store on this cluster (every member, the CA with TLS), with
        ``settings`` (a prefix, credentials, timeouts) on top."""
        from controller.store.etcd_settings import EtcdSettings

        endpoints = tuple((HOST, m.client_port) for m in self.members)
        return EtcdSettings(endpoints, **{"ca_cert": self.ca, **settings})

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """The ``--store`` value naming every member."""
        return "etcd://" + ",".join(self.endpoints)

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    def start_member(self, member: Member) -> None:
        """Start (or restart, on its data directory) one member."""
        member.data_dir.mkdir(parents=True, exist_ok=True)
        client_url = f"{self.scheme}://{member.endpoint}"
        tls: list[str] = []
        if self.pki is not None:
            tls = ["--cert-file", self.pki.cert(CERT_NAME), "--key-file", self.pki.key(CERT_NAME)]
        args = [
            ETCD,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            *tls,
            "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-cluster", self._initial_cluster(),
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            # short elections: quorum loss and recovery within a test's patience
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--quota-backend-bytes", str(256 * 1024 * 1024),
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip
        log = member.log.open("ab")
        member.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def stop_member(self, member: Member, sig: int = signal.SIGKILL) -> None:
        """Stop one member (SIGKILL by default: a crash, not a goodbye)."""
        if member.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            member.proc.send_signal(sig)
        member.proc.wait(timeout=30)
        member.proc = None

    @staticmethod
    def pause_member(member: Member, paused: bool = True) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) one member: a frozen member accepts connections
        and answers nothing, like a member waiting on a leader that is gone."""
        if member.proc is not None:
            member.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def leader(self) -> Member:
        """The member that is the Raft leader now (from each member's /v3 status)."""
        for m in self.members:
            if m.proc is None:
                continue
            status = self.http(m, "/v3/maintenance/status", {})
            if status.get("leader") and status["leader"] == status.get("header", {}).get(
                "member_id"
            ):
                return m
        raise RuntimeError("no etcd member reports itself leader")

    def start(self, timeout: float = 30.0) -> None:
        if not os.path.exists(ETCD):
            raise RuntimeError("etcd is not installed (Debian package etcd-server)")
        if self.tls and self.pki is None:
            self.pki = Pki.create(self.root / "pki", hosts=[])
        if self.pki is not None:
            self.pki.add_ip_server(CERT_NAME, HOST)
        try:
            for m in self.members:
                self.start_member(m)
            self.wait_healthy(timeout)
        except BaseException:  # e.g. a port taken meanwhile: leave no member running
            self.stop()
            raise

    def wait_healthy(self, timeout: float = 30.0, members: list[Member] | None = None) -> None:
        """Until each running member (or the given ones) answers /health with a leader."""
        deadline = time.monotonic() + timeout
        for m in members or [m for m in self.members if m.proc is not None]:
            while not self._healthy(m):
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited: {m.log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {m.name} not healthy: {m.log.read_text()[-2000:]}")
                time.sleep(0.1)

    def _healthy(self, m: Member) -> bool:
        try:
            return bool(self.http(m, "/health").get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m, signal.SIGTERM)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
