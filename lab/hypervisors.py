"""Emulated hypervisors on one machine, for integration tests and the demo.

    with Lab(3) as lab:                      # prefix "tn", mgmt 10.251.0.254/24
        hv1, hv2 = lab.hv(1), lab.hv(2)
        # ... controller registers hv1.ovsdb_tcp, creates br-int ...
        vm = lab.add_vm(hv1, "vm1", "02:00:00:00:01:01", "10.0.0.1/24", "port-1")
        vm.ping("10.0.0.2")

Layout for prefix P (default ``tn``), hypervisor N (1..253):

* root namespace: Linux bridge ``P-mgmt`` with ``mgmt_ip`` (default 10.251.0.254/24, where the
  controller listens); veth ``P-mN`` on it, peer ``mgmt0`` in ``P-hvN`` with 10.251.0.N/24.
* namespace ``P-ul``: Linux bridge ``br-ul`` (MTU 9000), veth ``hvN`` on it, peer ``eth1`` in
  ``P-hvN``.
* namespace ``P-hvN``: its own ovsdb-server (``punix:<dir>/db.sock`` and
  ``ptcp:6640:10.251.0.N``) and ovs-vswitchd (userspace datapath), everything under
  ``<workdir>/hvN``; OVS netdev bridge ``br-phy`` with port ``eth1`` and the underlay IP
  10.252.0.N/24 on its internal interface. No ``br-int``: the controller creates it.
* VM ``name``: namespace ``P-name`` with ``eth0``; the peer (``tap<iface_id[:11]>`` unless
  ``port_name`` is given) is in ``P-hvN`` and is plugged into ``br-int`` with
  ``external_ids:iface-id/attached-mac/iface-status``.

IPv6 is off everywhere (no router solicitations, DAD, MLD reports or ND on the lab's links, so
tests that count packets see only their own) except in a VM created with ``ip6_cidr=``: that VM
has IPv6 on ``eth0`` and ``lo``, its EUI-64 link-local address (from its MAC) and the given
address, both without DAD (``accept_dad=0``: usable at once), and no SLAAC (``accept_ra=0``).
Its neighbour discovery is real: ``ip -6 neigh`` fills only through the switch.

``add_vm(..., plug=True)`` waits up to ``plug_timeout`` (20 s) for br-int to appear in that
hypervisor's OVSDB and raises LabError if it does not; ``plug=False`` only creates the VM and
``vm.plug()`` plugs it later.

Things worth knowing (userspace datapath, no kernel module):

* every bridge needs ``datapath_type=netdev`` (also the br-int the controller creates);
* ``hv.stop_vswitchd()``/``start_vswitchd()``: OpenFlow flows are gone after a restart (the
  controller must reinstall them); br-phy's tap is recreated, and start_vswitchd puts the
  underlay IP back on it;
* ``vm.unplug()`` + ``vm.plug()`` gives a new ofport unless ``ofport_request`` was given;
* right after flow changes the datapath may use stale cached flows for a few ms:
  ``hv.revalidator_wait()`` / ``lab.revalidator_wait()`` (~0.5 s) or ``vm.wait_reachable()``.

``close()`` (also on ``__exit__``) removes everything of the prefix and is idempotent; a start
first removes stale leftovers of the same prefix. A lab holds ``/tmp/tenantnet-lab-P.lock``
while up, so two labs with the same prefix never clean each other up.  Two labs run at once with
different prefixes and mgmt networks: take a plan from ``lab/plans.py`` (the one registry of
them), e.g. ``Lab(3, **plans.DEMO.lab_kwargs())``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Union

from . import plans, traffic
from .cleanup import LabLock, check_prefix, cleanup, default_workdir, leftovers, ns_pids
from .pki import Pki
from .proc import CommandError, log, pid_alive, read_pidfile, run, terminate
from .traffic import BackgroundPing, Capture, PingResult, PingStats

__all__ = [
    "Capture",
    "CommandError",
    "Hypervisor",
    "Lab",
    "LabBusy",
    "LabError",
    "PingResult",
    "PingStats",
    "Vm",
]

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NO_IPV6 = "net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"


class LabError(RuntimeError):
    pass


class LabBusy(LabError):
    """Another live lab holds this prefix, or another interface has the mgmt network."""


def _ns_script(ns: str, script: str, timeout: float = 20) -> None:
    run("ip", "netns", "exec", ns, "sh", "-ec", script, timeout=timeout)


def disable_ipv6_root(ifname: str) -> None:
    """No IPv6 on a root-namespace interface of ours (no router solicitations, DAD or MLD
    reports on the lab's links)."""
    with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6",
                                             "w") as f:
        f.write("1")


class Hypervisor:
    """One emulated hypervisor: a namespace with its own ovsdb-server and ovs-vswitchd."""

    def __init__(self, lab: Lab, n: int):
        self.lab = lab
        self.n = n
        self.name = f"hv{n}"
        self.ns = f"{lab.prefix}-hv{n}"
        self.dir = os.path.join(lab.workdir, self.name)
        self.tunnel_ip = str(lab.underlay_net.network_address + n)
        self.tunnel_cidr = f"{self.tunnel_ip}/{lab.underlay_net.prefixlen}"
        self.mgmt_ip = str(lab.mgmt_net.network_address + n)
        self.mgmt_cidr = f"{self.mgmt_ip}/{lab.mgmt_net.prefixlen}"
        self.mgmt_link = f"{lab.prefix}-m{n}"  # host side of mgmt0, in the root namespace
        self.ul_link = f"hv{n}"  # underlay side of eth1, in namespace <prefix>-ul
        self.ovsdb_unix = f"unix:{self.dir}/db.sock"
        self.ovsdb_tcp = f"tcp:{self.mgmt_ip}:{lab.ovsdb_port}"
        self.ovsdb_ssl = f"ssl:{self.mgmt_ip}:{lab.ovsdb_port}"
        self.hwaddr = f"02:fe:{n >> 8:02x}:{n & 0xFF:02x}:00:01"  # br-phy MAC, stable on restart
        self.env = {"OVS_RUNDIR": self.dir, "OVS_DBDIR": self.dir, "OVS_LOGDIR": self.dir}

    @property
    def ovsdb_target(self) -> str:
        """What to register: ``ssl:`` in a TLS lab (its ovsdb-server listens on pssl: only),
        else ``tcp:``."""
        return self.ovsdb_ssl if self.lab.pki is not None else self.ovsdb_tcp

    def __repr__(self) -> str:
        return f"<Hypervisor {self.name} ns={self.ns} tunnel={self.tunnel_ip} mgmt={self.mgmt_ip}>"

    # ------------------------------------------------------------------ bring-up
    def _setup(self) -> None:
        p = self.lab.prefix
        os.makedirs(self.dir, exist_ok=True)
        run("ip", "netns", "add", self.ns)
        run("ip", "link", "add", self.mgmt_link, "type", "veth", "peer", "name", "mgmt0",
            "netns", self.ns)
        disable_ipv6_root(self.mgmt_link)
        run("ip", "link", "set", self.mgmt_link, "master", f"{p}-mgmt", "up")
        mtu = str(self.lab.underlay_mtu)
        run("ip", "link", "add", "eth1", "netns", self.ns, "mtu", mtu, "type", "veth",
            "peer", "name", self.ul_link, "netns", self.lab.ul_ns, "mtu", mtu)
        run("ip", "-n", self.lab.ul_ns, "link", "set", self.ul_link, "master", "br-ul", "up")
        # eth1 is br-phy's port, as a real hypervisor's NIC is; unlike that NIC it is also a
        # kernel interface, which would answer ARP for br-phy's (the tunnel) address with
        # eth1's MAC: arp_ignore=1 leaves the answer to br-phy, with the bridge's MAC.
        _ns_script(self.ns, f"""
            sysctl -q -w {NO_IPV6} net.ipv6.conf.mgmt0.disable_ipv6=1 \
                net.ipv6.conf.eth1.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1 \
                net.ipv4.conf.eth1.arp_ignore=1
            ip link set lo up
            ip addr add {self.mgmt_cidr} dev mgmt0
            ip link set mgmt0 up
            ip link set eth1 up
        """)
        run("ovsdb-tool", "create", f"{self.dir}/conf.db", SCHEMA)
        self.start_ovsdb()
        if self.lab.pki is not None:
            # What an operator does once per TLS hypervisor: its key and certificate (signed by
            # the switch CA) and the controller CA, for ovsdb-server's pssl: and for vswitchd.
            self.vsctl("--no-wait", "set-ssl", *self.lab.pki.switch_files(self.name))
        self.vsctl("--no-wait", "init", "--", "set", "Open_vSwitch", ".",
                   f"external_ids:system-id={self.name}",
                   f"external_ids:hostname={self.lab.prefix}-{self.name}")
        self.start_vswitchd(restore_underlay=False)
        self.vsctl("add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev",
                   f"other_config:hwaddr={self.hwaddr}", "--", "add-port", "br-phy", "eth1",
                   "--", "set", "Interface", "br-phy", f"mtu_request={mtu}")
        self._restore_underlay_ip()

    def _restore_underlay_ip(self, timeout: float = 10) -> None:
        """Put the underlay IP on br-phy's internal (tap) interface; it is lost with vswitchd."""
        deadline = time.monotonic() + timeout
        while run("ip", "-n", self.ns, "link", "show", "br-phy", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: br-phy interface did not appear within {timeout} s")
            time.sleep(0.05)
        _ns_script(self.ns, f"""
            ip addr replace {self.tunnel_cidr} dev br-phy
            ip link set br-phy mtu {self.lab.underlay_mtu} up
        """)
        self.warm_underlay_neighbours()

    def warm_underlay_neighbours(self) -> None:
        """Static tunnel neighbours (``tnl/neigh/set``) for every other hypervisor of the lab.

        The userspace datapath drops a tunnelled packet whose underlay next hop is not in its
        neighbour cache yet (it ARPs and drops).  A real hypervisor's cache is warm (its peers
        talk all the time) and a kernel datapath queues instead; here, the first packet between
        two new hosts would be lost - before tenantnet's ARP responder that was the VM's ARP
        broadcast (the VM retries), with it a data packet.  The br-phy MACs are fixed, so
        static entries stay right across vswitchd restarts (re-set by `start_vswitchd`)."""
        if not self.vswitchd_running():
            return
        for other in self.lab.hypervisors:
            if other is not self and other.n != self.n:
                self.appctl("tnl/neigh/set", "br-phy", other.tunnel_ip, other.hwaddr)

    # ------------------------------------------------------------------ daemons
    def _pid(self, daemon: str) -> int | None:
        pid = read_pidfile(f"{self.dir}/{daemon}.pid")
        return pid if pid and pid_alive(pid) else None

    def ovsdb_running(self) -> bool:
        return self._pid("ovsdb-server") is not None

    def vswitchd_running(self) -> bool:
        return self._pid("ovs-vswitchd") is not None

    def start_ovsdb(self) -> None:
        if self.ovsdb_running():
            return
        d = self.dir
        remote = [f"--remote=ptcp:{self.lab.ovsdb_port}:{self.mgmt_ip}"]
        if self.lab.pki is not None:
            remote = [f"--remote=pssl:{self.lab.ovsdb_port}:{self.mgmt_ip}",
                      "--private-key=db:Open_vSwitch,SSL,private_key",
                      "--certificate=db:Open_vSwitch,SSL,certificate",
                      "--ca-cert=db:Open_vSwitch,SSL,ca_cert"]
        run("ovsdb-server", f"{d}/conf.db", "-vconsole:off", "-vfile:info",
            f"--remote=punix:{d}/db.sock", *remote,
            f"--pidfile={d}/ovsdb-server.pid", f"--unixctl={d}/ovsdb-server.ctl",
            f"--log-file={d}/ovsdb-server.log", "--detach", "--no-chdir",
            ns=self.ns, env=self.env)

    def start_vswitchd(self, restore_underlay: bool = True) -> None:
        """Start ovs-vswitchd (no-op if running) and put the underlay IP back on br-phy."""
        if not self.vswitchd_running():
            d = self.dir
            run("ovs-vswitchd", self.ovsdb_unix, "-vconsole:off", "-vfile:info",
                f"--pidfile={d}/ovs-vswitchd.pid", f"--unixctl={d}/ovs-vswitchd.ctl",
                f"--log-file={d}/ovs-vswitchd.log", "--detach", "--no-chdir",
                "--disable-system", ns=self.ns, env=self.env)
        if restore_underlay:
            self._restore_underlay_ip()

    def _stop(self, daemon: str, kill: bool, timeout: float = 5) -> None:
        pid = self._pid(daemon)
        if pid is None:
            return
        if kill:
            os.kill(pid, 9)
        else:
            with contextlib.suppress(CommandError):
                run("ovs-appctl", "-t", f"{self.dir}/{daemon}.ctl", "exit", timeout=timeout)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid):
            terminate([pid], grace=1)

    def stop_vswitchd(self, kill: bool = False) -> None:
        """Stop ovs-vswitchd (``kill=True``: SIGKILL, like a crash). The db keeps its config."""
        self._stop("ovs-vswitchd", kill)

    def stop_ovsdb(self, kill: bool = False) -> None:
        self._stop("ovsdb-server", kill)

    def stop_ovs(self, kill: bool = False) -> None:
        self.stop_vswitchd(kill)
        self.stop_ovsdb(kill)

    def start_ovs(self) -> None:
        """Start ovsdb-server (same conf.db) and ovs-vswitchd; restores the underlay IP."""
        self.start_ovsdb()
        self.start_vswitchd()

    def restart_vswitchd(self, kill: bool = False) -> None:
        self.stop_vswitchd(kill)
        self.start_vswitchd()

    # ------------------------------------------------------------------ clients
    def vsctl(self, *args: str, timeout: float = 10, check: bool = True) -> str:
        """``ovs-vsctl --db=unix:<dir>/db.sock --timeout=T ARGS``; returns stripped stdout."""
        cp = run("ovs-vsctl", f"--db={self.ovsdb_unix}", f"--timeout={int(max(1, timeout))}",
                 *args, env=self.env, timeout=timeout + 5, check=check)
        return cp.stdout.strip()

    def ofctl(self, *args: str, timeout: float = 10, check: bool = True,
              input: str | None = None) -> str:
        """``ovs-ofctl -O OpenFlow13 ARGS`` with OVS_RUNDIR set (``br-int`` = its mgmt socket).
        ``input`` is fed to stdin, e.g. ``ofctl("add-flows", "br-int", "-", input=text)``."""
        cp = run("ovs-ofctl", "-O", "OpenFlow13", *args, env=self.env, timeout=timeout,
                 check=check, input=input)
        return cp.stdout

    def appctl(self, *args: str, target: str = "ovs-vswitchd", timeout: float = 10) -> str:
        """``ovs-appctl -t <dir>/<target>.ctl ARGS`` (target ovs-vswitchd or ovsdb-server)."""
        return run("ovs-appctl", "-t", f"{self.dir}/{target}.ctl", *args, env=self.env,
                   timeout=timeout).stdout

    def dump_flows(self, bridge: str = "br-int", *match: str) -> list[str]:
        """Flows of ``bridge`` without stats (cookie, table, priority, match, actions)."""
        out = self.ofctl("dump-flows", "--no-stats", bridge, *match)
        return [line.strip() for line in out.splitlines()
                if line.strip() and not line.startswith(("OFPST_FLOW", "NXST_FLOW"))]

    def controller_roles(self) -> dict[str, str]:
        """Controller target -> its OpenFlow role as vswitchd reports it (``master``,
        ``slave``, ``other``), or ``down`` while not connected.  Targets in their plain
        spelling (the fast reconnect may write ``tcp:[IP]:PORT``).  vswitchd refreshes these
        columns every few seconds: a role change shows up late, never early."""
        out = self.vsctl("--format=csv", "--no-headings", "--columns=target,role,is_connected",
                         "list", "Controller")
        roles = {}
        for line in out.splitlines():
            target, role, connected = (f.strip('"') for f in line.split(","))
            roles[target.replace("[", "").replace("]", "")] = (
                role if connected == "true" else "down"
            )
        return roles

    def trace(self, bridge: str, flow: str) -> str:
        """``ofproto/trace`` output for ``flow`` (e.g. ``in_port=1,dl_dst=...,ip``)."""
        return self.appctl("ofproto/trace", bridge, flow)

    def revalidator_wait(self) -> None:
        """Wait until the datapath flow cache reflects the OpenFlow tables (``revalidator/wait``).

        After replace-flows/del-flows the userspace datapath may use stale cached flows for a
        few ms (measured here: 1 ping in 4 lost right after re-plugging a port)."""
        self.appctl("revalidator/wait")

    def has_bridge(self, bridge: str = "br-int") -> bool:
        return run("ovs-vsctl", f"--db={self.ovsdb_unix}", "--timeout=5", "br-exists", bridge,
                   check=False, timeout=10).returncode == 0

    def wait_bridge(self, bridge: str = "br-int", timeout: float = 20) -> None:
        """Wait until ``bridge`` exists in this hypervisor's OVSDB and vswitchd has created it."""
        deadline = time.monotonic() + timeout
        while not self.has_bridge(bridge):
            if time.monotonic() > deadline:
                raise LabError(
                    f"{self.name}: bridge {bridge} did not appear in {self.ovsdb_unix} within "
                    f"{timeout:g} s (the controller creates br-int when the host is registered; "
                    "create the VM with plug=False and call vm.plug() later)")
            time.sleep(0.1)
        # returns once vswitchd has applied the config (cur_cfg caught up)
        self.vsctl("--", "br-exists", bridge, timeout=max(1, deadline - time.monotonic()))

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30):
        """Run a command inside the hypervisor namespace; returns CompletedProcess."""
        return run(*cmd, ns=self.ns, env=self.env, check=check, timeout=timeout)

    def capture(self, iface: str, bpf: str = "", count: int = 10, timeout: float = 5) -> Capture:
        """tcpdump on an interface of the hypervisor namespace (e.g. ``eth1``, ``mgmt0``)."""
        return self.lab._capture(self.ns, iface, bpf, count, timeout)

    def rss_kb(self) -> dict[str, int]:
        """Resident memory of this hypervisor's daemons in kB."""
        out = {}
        for daemon in ("ovsdb-server", "ovs-vswitchd"):
            pid = self._pid(daemon)
            if pid:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            out[daemon] = int(line.split()[1])
        return out

    def log_tail(self, daemon: str = "ovs-vswitchd", lines: int = 40) -> str:
        try:
            with open(f"{self.dir}/{daemon}.log") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


HvRef = Union[Hypervisor, int, str]  # noqa: UP007


class Vm:
    """A VM: namespace with eth0, its peer plugged into br-int of ``hv``."""

    def __init__(self, lab: Lab, hv: Hypervisor, name: str, mac: str, ip_cidr: str,
                 iface_id: str, port_name: str, gateway: str | None, ofport_request: int | None,
                 ip6_cidr: str | None = None):
        self.lab, self.hv, self.name, self.mac, self.iface_id = lab, hv, name, mac.lower(), iface_id
        iface = ipaddress.ip_interface(ip_cidr)
        self.ip = str(iface.ip)
        self.cidr = str(iface)
        iface6 = ipaddress.IPv6Interface(ip6_cidr) if ip6_cidr is not None else None
        self.ip6 = str(iface6.ip) if iface6 is not None else None  # None: IPv6 off
        self.cidr6 = str(iface6) if iface6 is not None else None
        self.ns = f"{lab.prefix}-{name}"
        self.port = port_name
        self.gateway = gateway
        self.ofport_request = ofport_request
        self.plugged = False

    def __repr__(self) -> str:
        return f"<Vm {self.name} {self.ip} {self.mac} on {self.hv.name} port={self.port}>"

    def _create(self) -> None:
        # arp_ignore stays Linux's default (0) here, as in cloud images: a VM answers ARP on
        # eth0 for any of its addresses, also one on lo (the extra-route nexthop test's).
        run("ip", "netns", "add", self.ns)
        run("ip", "link", "add", "eth0", "netns", self.ns, "type", "veth", "peer", "name",
            self.port, "netns", self.hv.ns)
        gw = f"ip route add default via {self.gateway}" if self.gateway else ""
        if self.cidr6 is None:
            v6 = "net.ipv6.conf.eth0.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1"
            addr6 = ""
        else:
            # eth0 is still down: its link-local address is derived from the MAC set below
            # when it comes up; no DAD (nothing would answer, but it delays the address 1 s)
            v6 = ("net.ipv6.conf.eth0.accept_dad=0 net.ipv6.conf.eth0.accept_ra=0 "
                  "net.ipv6.conf.eth0.disable_ipv6=0 net.ipv6.conf.lo.disable_ipv6=0")
            addr6 = f"ip -6 addr add {self.cidr6} dev eth0 nodad"
        _ns_script(self.ns, f"""
            sysctl -q -w {NO_IPV6} {v6}
            ip link set lo up
            ip link set eth0 address {self.mac}
            ip addr add {self.cidr} dev eth0
            {addr6}
            ip link set eth0 up
            {gw}
            ethtool -K eth0 tx off >/dev/null
        """)
        run("ip", "-n", self.hv.ns, "link", "set", self.port, "up")

    def plug(self, timeout: float = 20, bridge: str = "br-int") -> None:
        """Add the port to br-int (waits up to ``timeout`` for br-int to exist)."""
        self.hv.wait_bridge(bridge, timeout)
        extra = [f"ofport_request={self.ofport_request}"] if self.ofport_request else []
        self.hv.vsctl("--may-exist", "add-port", bridge, self.port, "--", "set", "Interface",
                      self.port, f"external_ids:iface-id={self.iface_id}",
                      f"external_ids:attached-mac={self.mac}", "external_ids:iface-status=active",
                      *extra, timeout=timeout)
        self.plugged = True

    def unplug(self) -> None:
        """Remove the OVS port (the namespace and veth stay; ``plug()`` puts it back)."""
        self.hv.vsctl("--if-exists", "del-port", self.port)
        self.plugged = False

    def ofport(self) -> int:
        """OpenFlow port number from OVSDB (-1 if OVS could not open the port)."""
        out = self.hv.vsctl("get", "Interface", self.port, "ofport")
        try:
            return int(out)
        except ValueError:
            return -1

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30):
        """Run a command inside the VM namespace; returns CompletedProcess."""
        return run(*cmd, ns=self.ns, check=check, timeout=timeout)

    def ping(self, ip: str, count: int = 3, interval: float = 0.2,
             timeout: float = 2) -> PingResult:
        """(sent, received); never raises for loss."""
        return traffic.ping(self.ns, str(ip), count, interval, timeout)

    def wait_reachable(self, ip: str, timeout: float = 10, interval: float = 0.05) -> float:
        """Ping ``ip`` until a reply comes back; returns the seconds it took (LabError after
        ``timeout``)."""
        t0 = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - t0)
            if self.ping(ip, count=1, timeout=max(0.1, min(0.5, left))).received:
                return round(time.monotonic() - t0, 3)
            if time.monotonic() - t0 >= timeout:
                raise LabError(f"{self.name}: {ip} not reachable within {timeout:g} s")
            time.sleep(interval)

    def ping_background(self, ip: str, interval: float = 0.01) -> BackgroundPing:
        """Start ping; ``handle.stop()`` -> PingStats(sent, received, max_gap_ms)."""
        h = BackgroundPing(self.ns, str(ip), interval,
                           self.lab._tmpfile(f"ping-{self.name}-{ip}"))
        self.lab._handles.append(h)
        return h

    def tcp_transfer(self, server: Vm | str, nbytes: int = 10_000_000, port: int = 5001,
                     timeout: float = 20) -> int:
        """Send ``nbytes`` over one TCP connection to a receiver run in ``server``'s namespace;
        returns the byte count the receiver got (== nbytes on success)."""
        if not isinstance(server, Vm):
            raise TypeError("tcp_transfer needs the server Vm (it runs the receiver there)")
        return traffic.tcp_transfer(self.ns, server.ns, server.ip, nbytes, port, timeout)

    def iperf(self, server: Vm, seconds: float = 2, port: int = 5201) -> float:
        """iperf3 TCP throughput to ``server`` in Mbit/s."""
        return traffic.iperf(self.ns, server.ns, server.ip, seconds, port, self.lab.workdir)

    def capture(self, iface: str = "eth0", count: int = 10, timeout: float = 5,
                bpf: str = "") -> Capture:
        """Start tcpdump in the VM (already listening on return); ``.wait()`` -> lines."""
        return self.lab._capture(self.ns, iface, bpf, count, timeout)

    def neigh_flush(self) -> None:
        self.exec("ip", "neigh", "flush", "dev", "eth0")


class Lab:
    """N emulated hypervisors (see module docstring). Context manager; ``close()`` is idempotent.

    Args:
        n_hosts: hypervisors to bring up at start (more with ``add_hypervisor()``).
        prefix: name prefix of every namespace/link (``[a-z][a-z0-9]{0,7}``).
        workdir: default ``/tmp/tenantnet-lab-<prefix>``.
        mgmt_ip: controller address on the ``<prefix>-mgmt`` bridge; hypervisor N gets .N.
        underlay_net: hypervisor N's tunnel IP is its .N.
        lock_timeout: how long to wait for another lab with the same prefix to finish.
        parallel: hypervisors set up concurrently.
        pki: a ``lab.pki.Pki``: TLS lab.  Every hypervisor gets its ovs-pki switch
            certificate in its SSL record (``ovs-vsctl set-ssl``) and its ovsdb-server listens on
            ``pssl:`` instead of ``ptcp:`` (register ``hv.ovsdb_target``/``hv.ovsdb_ssl``);
            ``controller_target()`` is ``ssl:``.  Start the controller with
            ``pki.controller_args()``.
    """

    def __init__(self, n_hosts: int = 3, prefix: str = plans.DEFAULT.prefix,
                 workdir: str | None = None, mgmt_ip: str = plans.DEFAULT.mgmt_ip,
                 underlay_net: str = str(plans.DEFAULT.underlay_net),
                 underlay_mtu: int = 9000, ovsdb_port: int = 6640, lock_timeout: float = 0,
                 parallel: int = 4, pki: Pki | None = None):
        self.prefix = check_prefix(prefix)
        self.n_hosts = n_hosts
        self.workdir = os.path.abspath(workdir or default_workdir(prefix))
        iface = ipaddress.ip_interface(mgmt_ip)
        self.mgmt_ip = str(iface.ip)
        self.mgmt_cidr = str(iface)
        self.mgmt_net = iface.network
        self.underlay_net = ipaddress.ip_network(underlay_net)
        self.underlay_mtu = underlay_mtu
        self.ovsdb_port = ovsdb_port
        self.lock_timeout = lock_timeout
        self.parallel = max(1, parallel)
        self.pki = pki
        self.mgmt_bridge = f"{prefix}-mgmt"
        self.ul_ns = f"{prefix}-ul"
        self.hypervisors: list[Hypervisor] = []
        self.vms: dict[str, Vm] = {}
        self.timings: dict[str, float] = {}
        self._handles: list = []
        self._lock = LabLock(prefix)
        self._started = False
        self._closed = False
        self._seq = 0
        limit = min(253, self.mgmt_net.num_addresses - 3, self.underlay_net.num_addresses - 2)
        if not 0 <= n_hosts <= limit:
            raise ValueError(f"n_hosts must be 0..{limit}")

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} hosts={len(self.hypervisors)} mgmt={self.mgmt_cidr}>"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Lab:
        if self._started:
            return self
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, veths, OVS daemons)")
        if not self._lock.acquire(self.lock_timeout):
            raise LabBusy(f"another lab with prefix {self.prefix!r} is running (pid "
                          f"{self._lock.holder()}, lock {self._lock.path}); use another prefix "
                          "and mgmt_ip, or wait")
        self._started = True
        self._closed = False
        try:
            t0 = time.monotonic()
            cleanup(self.prefix, self.workdir)  # stale leftovers of a crashed run
            self.timings["stale_cleanup_s"] = round(time.monotonic() - t0, 3)
            self._check_mgmt_subnet()
            os.makedirs(self.workdir, exist_ok=True)
            self._setup_root()
            t1 = time.monotonic()
            self.add_hypervisors(self.n_hosts)
            self.timings["hypervisors_s"] = round(time.monotonic() - t1, 3)
            self.timings["start_s"] = round(time.monotonic() - t0, 3)
            log.info("lab %s up: %d hypervisors in %.2f s", self.prefix, self.n_hosts,
                     self.timings["start_s"])
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything this lab (prefix) created. Safe to call any number of times."""
        if self._closed or not self._started:
            self._closed = True
            return
        try:
            for h in self._handles:
                with contextlib.suppress(Exception):
                    h.stop()
            self._handles.clear()
            t0 = time.monotonic()
            cleanup(self.prefix, self.workdir)
            self.timings["close_s"] = round(time.monotonic() - t0, 3)
        finally:
            self._closed = True
            self._started = False
            self.hypervisors.clear()
            self.vms.clear()
            self._lock.release()

    def leftovers(self) -> dict[str, list]:
        """Namespaces/links/processes/work dir that exist for this prefix (empty after close)."""
        return leftovers(self.prefix, self.workdir)

    def _check_mgmt_subnet(self) -> None:
        out = run("ip", "-o", "-4", "addr", "show").stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "inet":
                addr = ipaddress.ip_interface(parts[3])
                if addr.network.overlaps(self.mgmt_net) and parts[1] != self.mgmt_bridge:
                    raise LabBusy(f"mgmt network {self.mgmt_net} already used by {parts[1]} "
                                   f"({parts[3]}); pass another mgmt_ip")

    def _setup_root(self) -> None:
        run("ip", "link", "add", self.mgmt_bridge, "type", "bridge")
        disable_ipv6_root(self.mgmt_bridge)
        run("ip", "addr", "add", self.mgmt_cidr, "dev", self.mgmt_bridge)
        run("ip", "link", "set", self.mgmt_bridge, "up")
        run("ip", "netns", "add", self.ul_ns)
        _ns_script(self.ul_ns, f"""
            sysctl -q -w {NO_IPV6}
            ip link set lo up
            ip link add br-ul mtu {self.underlay_mtu} type bridge
            ip link set br-ul up
        """)

    def add_hypervisors(self, count: int) -> list[Hypervisor]:
        """Add ``count`` hypervisors (numbered after the existing ones), in parallel."""
        if not self._started:
            raise LabError("start the lab first")
        first = len(self.hypervisors) + 1
        new = [Hypervisor(self, n) for n in range(first, first + count)]
        if self.pki is not None:
            for hv in new:
                self.pki.add_switch(hv.name)  # ovs-pki is not safe to run in parallel
        self.hypervisors.extend(new)
        if not new:
            return new
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(new))) as ex:
            for f in [ex.submit(hv._setup) for hv in new]:
                f.result()
        for hv in self.hypervisors:
            hv.warm_underlay_neighbours()
        return new

    def add_hypervisor(self) -> Hypervisor:
        return self.add_hypervisors(1)[0]

    # ------------------------------------------------------------------ lookups
    def hv(self, ref: HvRef) -> Hypervisor:
        """Hypervisor by object, number (1-based) or name ('hv1')."""
        if isinstance(ref, Hypervisor):
            return ref
        n = int(ref[2:]) if isinstance(ref, str) and ref.startswith("hv") else int(ref)
        if not 1 <= n <= len(self.hypervisors):
            raise LabError(f"no hypervisor {ref!r} (lab has {len(self.hypervisors)})")
        return self.hypervisors[n - 1]

    def revalidator_wait(self, hvs: list[HvRef] | None = None) -> None:
        """``revalidator/wait`` on several hypervisors at once (each takes ~0.5 s)."""
        targets = [self.hv(h) for h in hvs] if hvs is not None else self.hypervisors
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as ex:
            for f in [ex.submit(hv.revalidator_wait) for hv in targets]:
                f.result()

    @property
    def hvs(self) -> list[Hypervisor]:
        return list(self.hypervisors)

    def controller_target(self, port: int = 6653) -> str:
        """OpenFlow target for ``set-controller`` (``tcp:<mgmt_ip>:<port>``, ``ssl:`` with TLS)."""
        return f"{'ssl' if self.pki is not None else 'tcp'}:{self.mgmt_ip}:{port}"

    # ------------------------------------------------------------------ mgmt partition
    def cut_mgmt(self, hv: HvRef) -> None:
        """Partition a hypervisor from the controller: its port on the management bridge stops
        forwarding (state disabled), both ways, and nothing changes inside its namespace.

        A partition beyond the NIC leaves the host's link up, and so must this one: taking the
        veth down drops ``mgmt0``'s carrier, a netlink link event in the hypervisor's namespace,
        which has OVS 3.1's userspace datapath flush its route cache and can drop a tunnelled
        packet of that host (the race ``lab/ovs_plug_race.py`` reproduces for a port plug): the
        partition test lost 1 echo of 478 to it in CI."""
        run("bridge", "link", "set", "dev", self.hv(hv).mgmt_link, "state", "0")

    def heal_mgmt(self, hv: HvRef) -> None:
        """Undo :meth:`cut_mgmt`: the port forwards again (STP is off on the bridge)."""
        run("bridge", "link", "set", "dev", self.hv(hv).mgmt_link, "state", "3")

    # ------------------------------------------------------------------ VMs
    def add_vm(self, hv: HvRef, name: str, mac: str, ip_cidr: str, iface_id: str, *,
               plug: bool = True, plug_timeout: float = 20, port_name: str | None = None,
               gateway: str | None = None, ofport_request: int | None = None,
               ip6_cidr: str | None = None) -> Vm:
        """Create VM ``name`` on ``hv``; with ``plug=True`` wait (``plug_timeout``) for br-int and
        plug it, else call ``vm.plug()`` later. Port name defaults to ``tap<iface_id[:11]>``.
        ``ip6_cidr``: IPv6 on in this VM, with this address (see the module docstring)."""
        hv = self.hv(hv)
        if not _NAME_RE.match(name) or len(name) > 40:
            raise ValueError(f"bad VM name {name!r}")
        if name in self.vms:
            raise LabError(f"VM {name!r} exists")
        if port_name is None:
            port_name = "tap" + (re.sub(r"[^A-Za-z0-9_-]", "", iface_id)[:11] or name[:11])
        if len(port_name) > 15 or not _NAME_RE.match(port_name):
            raise ValueError(f"bad port name {port_name!r} (max 15 chars)")
        if any(v.hv is hv and v.port == port_name for v in self.vms.values()):
            raise LabError(f"port {port_name} already used on {hv.name}; pass port_name=")
        vm = Vm(self, hv, name, mac, ip_cidr, iface_id, port_name, gateway, ofport_request,
                ip6_cidr)
        self.vms[name] = vm
        try:
            vm._create()
            if plug:
                vm.plug(plug_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.remove_vm(vm)
            raise
        return vm

    def remove_vm(self, vm: Vm | str) -> None:
        vm = self.vms[vm] if isinstance(vm, str) else vm
        if vm.hv.ovsdb_running():
            with contextlib.suppress(CommandError):
                vm.hv.vsctl("--if-exists", "del-port", vm.port, timeout=5)
        pids = ns_pids(vm.ns)
        if pids:
            terminate(pids)
        run("ip", "-n", vm.hv.ns, "link", "del", vm.port, check=False)
        run("ip", "netns", "del", vm.ns, check=False)
        self.vms.pop(vm.name, None)

    # ------------------------------------------------------------------ captures
    def _tmpfile(self, tag: str) -> str:
        self._seq += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)
        d = os.path.join(self.workdir, "captures")
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, f"{self._seq:04d}-{safe}.txt")

    def _capture(self, ns: str, iface: str, bpf: str, count: int, timeout: float) -> Capture:
        cap = Capture(ns, iface, self._tmpfile(f"{ns}-{iface}"), bpf, count, timeout)
        self._handles.append(cap)
        return cap

    def capture_underlay(self, bpf: str = "", count: int = 10, timeout: float = 5,
                         iface: str = "br-ul") -> Capture:
        """tcpdump -e -vv on the underlay bridge (VXLAN shows ``vni N``, GRE ``key=0x..``)."""
        return self._capture(self.ul_ns, iface, bpf, count, timeout)

    # ------------------------------------------------------------------ info
    def rss_kb(self) -> dict[str, dict[str, int]]:
        return {hv.name: hv.rss_kb() for hv in self.hypervisors}

    def describe(self) -> str:
        lines = [repr(self)]
        for hv in self.hypervisors:
            lines.append(f"  {hv!r} ovsdb={hv.ovsdb_target}")
        for vm in self.vms.values():
            lines.append(f"  {vm!r}")
        return "\n".join(lines)
