"""Shared machinery of the tenantnet Mininet topologies (multi_hypervisor.py, single_host.py).

Runs under Debian's ``/usr/bin/python3`` (where Mininet 2.3.0 lives); the controller itself runs
from the repository's ``.venv`` as a child process (``lab.tenantnet_proc``).

Layout (``TenantLab(n_hosts)``):

* ``mgmt``: a Linux bridge ``mnt70_mgmt`` in the root namespace with 10.251.70.254/24, where
  tenantnet's OpenFlow listener binds; veth ``mnt70_hvN`` <-> ``mgmt0`` (10.251.70.N/24) of each
  hypervisor.  The controller reaches each hypervisor's OVSDB at ``tcp:10.251.70.N:6640``.
* ``ul``: a Mininet node (own namespace) holding the Linux bridge ``br-ul`` (MTU 9000): the
  underlay.  Port ``hvN`` <-> ``eth1`` of hypervisor N.
* ``hvN``: a Mininet switch node (own namespace) running its own ovsdb-server and ovs-vswitchd
  (userspace datapath) with everything under ``<workdir>/hvN``; the OVS netdev bridge ``br-phy``
  holds ``eth1`` and the underlay IP 10.252.70.N/24.  tenantnet creates ``br-int`` once the host
  is registered.  In the Mininet CLI, ``hvN ovs-vsctl show`` / ``hvN ovs-ofctl -O OpenFlow13
  dump-flows br-int`` talk to that hypervisor's private daemons.
* VMs: Mininet hosts ``<name>`` with ``<name>-eth0`` (the port's MAC/IP from the API, tx offload
  off); the peer ``vif-<name>`` sits in the hypervisor and is plugged into ``br-int`` with
  ``external_ids:iface-id=<port id>``.

All tenants share the overlapping subnet 10.70.0.0/24; each tenant gets its own allocation pool
(tenant t: 10.70.0.(10t+1)...) so that a ping to another tenant's VM addresses an IP that does not
exist in the sender's network and can only be answered if isolation is broken.

Only one lab of this kind runs at a time (``/tmp/tenantnet-mn70.lock``).  Everything is removed on
exit, on failure, on Ctrl-C and on SIGTERM/SIGHUP; a run killed with SIGKILL leaves daemons that
the next run removes (processes whose command line names a ``/tmp/tenantnet-mn70-*`` work dir,
root-namespace links ``mnt70_*``).  Never ``mn -c``.
"""

from __future__ import annotations

import glob
import ipaddress
import itertools
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mininet.cli import CLI
from mininet.log import output, setLogLevel
from mininet.net import Mininet
from mininet.node import Switch

from lab import plans
from lab.cleanup import LabLock, procs_mentioning, root_links
from lab.hypervisors import NO_IPV6, SCHEMA, disable_ipv6_root
from lab.proc import pid_alive, read_pidfile, terminate
from lab.report import step, table
from lab.tenantnet_proc import TenantnetProcess

REPO = Path(__file__).resolve().parents[1]

VENV_PYTHON = REPO / ".venv" / "bin" / "python"

PLAN = plans.MININET
MGMT_NET = PLAN.mgmt_net
MGMT_GW = PLAN.mgmt_gw
UNDERLAY_NET = PLAN.underlay_net
VM_SUBNET = ipaddress.ip_network("10.70.0.0/24")
UNDERLAY_MTU = 9000
OVSDB_PORT = 6640
OFP_PORT = 6653

TAG = PLAN.prefix  # root-namespace links: mnt70_mgmt, mnt70_hvN (not Lab's mnt70-* names)
WORK_PREFIX = "tenantnet-mn70-"  # work dirs /tmp/tenantnet-mn70-XXXX
LOCK_PATH = "/tmp/tenantnet-mn70.lock"
NET_TYPES = ("vxlan", "gre")


class TopoError(RuntimeError):
    """The topology could not be brought up (message says what and where)."""


class Terminated(BaseException):
    """SIGTERM/SIGHUP.  A BaseException so that Mininet's CLI loop (which swallows
    KeyboardInterrupt) does not keep running."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)


def nsrun(node, *argv: str, check: bool = True, timeout: float = 30,
          env: dict[str, str] | None = None) -> str:
    """Run argv in ``node``'s namespaces (``mnexec -a``); returns stdout, raises TopoError."""
    cmd = ["mnexec", "-a", str(node.pid), *argv]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        raise TopoError(f"{node.name}: {' '.join(argv)}: timed out after {timeout} s") from exc
    if check and cp.returncode != 0:
        raise TopoError(f"{node.name}: {' '.join(argv)} -> exit {cp.returncode}: "
                        f"{(cp.stderr or cp.stdout).strip()}")
    return cp.stdout


def _root_links() -> list[str]:
    return [n for n in root_links() if n.startswith(f"{TAG}_")]


def _our_processes() -> list[int]:
    """Processes whose command line names one of our work dirs (OVS daemons, the controller)."""
    return procs_mentioning(f"/tmp/{WORK_PREFIX}", programs=None)


def leftovers() -> dict[str, list]:
    """What a previous run may have left behind (empty lists = clean)."""
    return {
        "processes": _our_processes(),
        "links": _root_links(),
        "workdirs": glob.glob(f"/tmp/{WORK_PREFIX}*"),
    }


def remove_leftovers(verbose: bool = False) -> None:
    if verbose and any(leftovers().values()):
        print(f"removing leftovers of an earlier run: {leftovers()}", flush=True)
    pids = _our_processes()
    if pids:
        terminate(pids)
    for link in _root_links():
        subprocess.run(["ip", "link", "del", link], capture_output=True)
    for d in glob.glob(f"/tmp/{WORK_PREFIX}*"):
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------ nodes
class KernelBridge(Switch):
    """A Linux bridge holding all of the node's interfaces (root namespace or its own)."""

    def __init__(self, name: str, bridge: str, mtu: int = 1500, bridge_ip: str | None = None,
                 **params):
        Switch.__init__(self, name, **params)
        self.bridge = bridge
        self.mtu = mtu
        self.bridge_ip = bridge_ip

    def bridge_ports(self) -> list[str]:
        return [i.name for i in self.intfList() if i.name != "lo"]

    def start(self, controllers) -> None:
        br, mtu = self.bridge, self.mtu
        script = [f"ip link add name {br} type bridge", f"ip link set {br} mtu {mtu}"]
        if self.inNamespace:
            script.insert(0, f"sysctl -q -w {NO_IPV6}; ip link set lo up")
        else:
            for port in self.bridge_ports():
                disable_ipv6_root(port)
        script += [f"ip link set {p} mtu {mtu} master {br} up" for p in self.bridge_ports()]
        if self.bridge_ip:
            script.append(f"ip addr add {self.bridge_ip} dev {br}")
        script.append(f"ip link set {br} up")
        nsrun(self, "sh", "-ec", "\n".join(script))
        if not self.inNamespace:
            disable_ipv6_root(br)

    def stop(self, deleteIntfs: bool = True) -> None:
        nsrun(self, "ip", "link", "del", self.bridge, check=False)
        Switch.stop(self, deleteIntfs)


class Hypervisor(Switch):
    """A hypervisor: its own ovsdb-server + ovs-vswitchd (userspace datapath) in its namespace."""

    def __init__(self, name: str, n: int, workdir: str, **params):
        params["inNamespace"] = True
        Switch.__init__(self, name, dpid=f"{n:x}", **params)
        self.n = n
        self.dir = os.path.join(workdir, name)
        self.mgmt_ip = str(MGMT_NET.network_address + n)
        self.tunnel_ip = str(UNDERLAY_NET.network_address + n)
        self.ovsdb_tcp = f"tcp:{self.mgmt_ip}:{OVSDB_PORT}"
        self.env = {"OVS_RUNDIR": self.dir, "OVS_DBDIR": self.dir, "OVS_LOGDIR": self.dir}
        self.pids: list[int] = []

    def _daemon_opts(self, daemon: str) -> list[str]:
        d = self.dir
        return ["-vconsole:off", "-vfile:info", f"--pidfile={d}/{daemon}.pid",
                f"--unixctl={d}/{daemon}.ctl", f"--log-file={d}/{daemon}.log", "--detach",
                "--no-chdir"]

    def start(self, controllers) -> None:
        d = self.dir
        os.makedirs(d, exist_ok=True)
        # the node's shell (Mininet CLI: "hv1 ovs-vsctl show") talks to the private daemons
        self.cmd(f"export OVS_RUNDIR={d} OVS_DBDIR={d} OVS_LOGDIR={d}")
        nsrun(self, "sh", "-ec", f"sysctl -q -w {NO_IPV6}; ip link set lo up")
        subprocess.run(["ovsdb-tool", "create", f"{d}/conf.db", SCHEMA], check=True,
                       capture_output=True)
        nsrun(self, "ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock",
              f"--remote=ptcp:{OVSDB_PORT}:{self.mgmt_ip}", *self._daemon_opts("ovsdb-server"),
              env=self.env)
        self._track("ovsdb-server")
        self.vsctl("--no-wait", "init", "--", "set", "Open_vSwitch", ".",
                   f"external_ids:system-id={self.name}",
                   f"external_ids:hostname=mn70-{self.name}")
        nsrun(self, "ovs-vswitchd", f"unix:{d}/db.sock", "--disable-system",
              *self._daemon_opts("ovs-vswitchd"), env=self.env)
        self._track("ovs-vswitchd")
        self.vsctl("add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev",
                   "--", "add-port", "br-phy", "eth1",
                   "--", "set", "Interface", "br-phy", f"mtu_request={UNDERLAY_MTU}")
        deadline = time.monotonic() + 10
        while nsrun(self, "ip", "link", "show", "br-phy", check=False) == "":
            if time.monotonic() > deadline:
                raise TopoError(f"{self.name}: br-phy did not appear\n{self.log_tail()}")
            time.sleep(0.05)
        nsrun(self, "sh", "-ec", f"""
            ip link set eth1 mtu {UNDERLAY_MTU} up
            ip addr add {self.tunnel_ip}/{UNDERLAY_NET.prefixlen} dev br-phy
            ip link set br-phy mtu {UNDERLAY_MTU} up
        """)

    def _track(self, daemon: str) -> None:
        pid = read_pidfile(f"{self.dir}/{daemon}.pid")
        if pid is None:
            raise TopoError(f"{self.name}: {daemon} did not start\n{self.log_tail(daemon)}")
        self.pids.append(pid)

    def vsctl(self, *args: str, timeout: int = 10) -> str:
        cp = subprocess.run(["ovs-vsctl", f"--db=unix:{self.dir}/db.sock", f"--timeout={timeout}",
                             *args], capture_output=True, text=True, timeout=timeout + 5)
        if cp.returncode != 0:
            raise TopoError(f"{self.name}: ovs-vsctl {' '.join(args)}: {cp.stderr.strip()}")
        return cp.stdout.strip()

    def ofctl(self, *args: str) -> str:
        return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True,
                              text=True, timeout=15, env={**os.environ, **self.env}).stdout

    def log_tail(self, daemon: str = "ovs-vswitchd", lines: int = 15) -> str:
        try:
            with open(f"{self.dir}/{daemon}.log") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop_ovs(self) -> None:
        terminate([p for p in self.pids if pid_alive(p)])

    def stop(self, deleteIntfs: bool = True) -> None:
        self.stop_ovs()
        Switch.stop(self, deleteIntfs)


# ------------------------------------------------------------------------------------ lab
@dataclass
class Tenant:
    index: int
    name: str
    net_type: str
    network: dict
    subnet: dict
    vms: list[Vm] = field(default_factory=list)


@dataclass
class Vm:
    name: str
    tenant: Tenant
    hv: Hypervisor
    port: dict
    host: object  # mininet Host
    ip: str
    mac: str
    vif: str


class TenantLab:
    """Mininet + emulated hypervisors + tenantnet; a context manager that always cleans up."""

    def __init__(self, n_hosts: int, pool_size: int = 10, verbose: bool = False) -> None:
        if not 1 <= n_hosts <= 200:
            raise TopoError("between 1 and 200 hypervisors")
        self.n_hosts = n_hosts
        self.pool_size = pool_size
        self.verbose = verbose
        self.tenants: list[Tenant] = []
        self.vms: list[Vm] = []
        self.hvs: list[Hypervisor] = []
        self.net: Mininet | None = None
        self.ctl: TenantnetProcess | None = None
        self.api = None  # lab.tenantnet_proc.Api once the controller runs
        self.workdir: str | None = None
        self._held: LabLock | None = None  # LOCK_PATH
        self._node_pids: list[int] = []
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ bring-up
    def __enter__(self) -> TenantLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self, timeout: float = 60) -> None:
        lock = LabLock(PLAN.prefix, path=LOCK_PATH)
        if not lock.acquire(0):
            print(f"waiting for {LOCK_PATH} (another topology is running)", flush=True)
            if not lock.acquire(timeout):
                raise TopoError(f"another tenantnet Mininet topology holds {LOCK_PATH} "
                                f"(pid {lock.holder()})")
        self._held = lock

    def _check_mgmt_free(self) -> None:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            addr = ipaddress.ip_interface(parts[3])
            if addr.network.overlaps(MGMT_NET) or addr.network.overlaps(UNDERLAY_NET):
                raise TopoError(f"{parts[1]} in the root namespace already has {addr}: "
                                f"{MGMT_NET} / {UNDERLAY_NET} are in use by someone else")

    def _controller_python(self) -> str:
        """The venv's python.  TenantnetProcess starts it in its own session, so Ctrl-C in the
        Mininet CLI (sent to the terminal's foreground process group) does not stop it."""
        if not VENV_PYTHON.exists():
            raise TopoError(f"{VENV_PYTHON} missing: run `make bootstrap` first")
        return str(VENV_PYTHON)

    def _ofp_port(self) -> int:
        for port in (OFP_PORT, 0):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((MGMT_GW, port))
                except OSError:
                    continue
                return s.getsockname()[1]
        raise TopoError(f"cannot bind an OpenFlow port on {MGMT_GW}")

    def start(self) -> None:
        t0 = time.monotonic()
        setLogLevel("info" if self.verbose else "warning")
        self._lock()
        remove_leftovers(verbose=True)
        self._check_mgmt_free()
        self.workdir = tempfile.mkdtemp(prefix=WORK_PREFIX)
        step(f"Mininet: {self.n_hosts} hypervisor(s) with private userspace OVS, underlay "
             f"{UNDERLAY_NET} (MTU {UNDERLAY_MTU}), management {MGMT_NET}")
        net = self.net = Mininet(controller=None, build=False, autoSetMacs=False,
                                 autoStaticArp=False, waitConnected=False)
        mgmt = net.addSwitch("mgmt", cls=KernelBridge, bridge=f"{TAG}_mgmt",
                             bridge_ip=f"{MGMT_GW}/{MGMT_NET.prefixlen}", inNamespace=False,
                             dpid="fe")
        ul = net.addSwitch("ul", cls=KernelBridge, bridge="br-ul", mtu=UNDERLAY_MTU,
                           inNamespace=True, dpid="fd")
        for n in range(1, self.n_hosts + 1):
            hv = net.addSwitch(f"hv{n}", cls=Hypervisor, n=n, workdir=self.workdir)
            net.addLink(hv, ul, intfName1="eth1", intfName2=f"hv{n}")
            net.addLink(hv, mgmt, intfName1="mgmt0", intfName2=f"{TAG}_hv{n}",
                        params1={"ip": f"{hv.mgmt_ip}/{MGMT_NET.prefixlen}"})
            self.hvs.append(hv)
        net.build()
        net.start()
        self.timings["mininet"] = time.monotonic() - t0

        t1 = time.monotonic()
        port = self._ofp_port()
        step(f"tenantnet: OpenFlow on {MGMT_GW}:{port}, state in {self.workdir}/controller")
        self.ctl = TenantnetProcess(os.path.join(self.workdir, "controller"),
                                    ofp_listen=f"{MGMT_GW}:{port}",
                                    python=self._controller_python())
        self.ctl.start()
        self.api = self.ctl.api
        self.timings["controller"] = time.monotonic() - t1

        t2 = time.monotonic()
        step(f"registering hypervisors: POST /v2.0/hosts (ovsdb tcp:<hvN's mgmt ip>:{OVSDB_PORT})")
        for hv in self.hvs:
            self.api.create("host", id=hv.name, tunnel_ip=hv.tunnel_ip, ovsdb=hv.ovsdb_tcp,
                            datapath_type="netdev")
        self.api.wait_hosts_connected([hv.name for hv in self.hvs])
        for hv in self.hvs:  # tenantnet creates br-int on connect
            hv.vsctl("wait-until", "Bridge", "br-int", timeout=20)
        self.timings["hosts"] = time.monotonic() - t2

    # ------------------------------------------------------------------ tenants and VMs
    def add_tenant(self, net_type: str | None = None) -> Tenant:
        index = len(self.tenants) + 1
        net_type = net_type or NET_TYPES[(index - 1) % len(NET_TYPES)]
        first = 10 + (index - 1) * self.pool_size + 1
        last = first + self.pool_size - 1
        if last > 250:
            raise TopoError(f"{index} tenants x {self.pool_size} addresses do not fit "
                            f"{VM_SUBNET}")
        name = f"tenant{index}"
        network = self.api.create("network", name=f"{name}-net", project_id=name,
                                  **{"provider:network_type": net_type})
        pool = {"start": str(VM_SUBNET.network_address + first),
                "end": str(VM_SUBNET.network_address + last)}
        subnet = self.api.create("subnet", network_id=network["id"], cidr=str(VM_SUBNET),
                                 ip_version=4, name=f"{name}-subnet", project_id=name,
                                 allocation_pools=[pool])
        tenant = Tenant(index, name, net_type, network, subnet)
        self.tenants.append(tenant)
        return tenant

    def add_vm(self, tenant: Tenant, hv: Hypervisor, name: str) -> Vm:
        """Port through the API, a Mininet host with the port's MAC/IP, plugged into br-int."""
        port = self.api.create("port", network_id=tenant.network["id"], name=name,
                               project_id=tenant.name, device_id=f"mininet-{name}",
                               device_owner="compute:mininet")
        mac = port["mac_address"]
        ip = port["fixed_ips"][0]["ip_address"]
        plen = VM_SUBNET.prefixlen
        assert self.net is not None
        host = self.net.addHost(name, ip=f"{ip}/{plen}", mac=mac)
        nsrun(host, "sysctl", "-q", "-w", *NO_IPV6.split())
        vif = f"vif-{name}"
        self.net.addLink(host, hv, intfName1=f"{name}-eth0", intfName2=vif, addr1=mac)
        host.configDefault()
        intf = host.defaultIntf().name
        mtu = tenant.network.get("mtu") or 1500
        nsrun(host, "sh", "-ec", f"ip link set {intf} mtu {mtu}; ethtool -K {intf} tx off "
                                 ">/dev/null; ip link set lo up")
        nsrun(hv, "ip", "link", "set", vif, "up")
        hv.vsctl("--may-exist", "add-port", "br-int", vif, "--", "set", "Interface", vif,
                 f"external_ids:iface-id={port['id']}", f"external_ids:attached-mac={mac}",
                 "external_ids:iface-status=active", f"external_ids:vm-id=mininet-{name}")
        vm = Vm(name, tenant, hv, port, host, ip, mac, vif)
        tenant.vms.append(vm)
        self.vms.append(vm)
        return vm

    def wait_active(self, timeout: float = 30) -> float:
        t0 = time.monotonic()
        self.api.wait_ports_active([vm.port["id"] for vm in self.vms], timeout=timeout)
        took = time.monotonic() - t0
        self.timings["ports_active"] = took
        return took

    # ------------------------------------------------------------------ reporting
    def summary(self) -> str:
        ports = {p["id"]: p for p in self.api.list("port")}
        rows = []
        for vm in self.vms:
            p = ports.get(vm.port["id"], {})
            net = vm.tenant.network
            rows.append([vm.name, vm.tenant.name,
                         f"{vm.tenant.net_type}:{net.get('provider:segmentation_id')}",
                         vm.hv.name, vm.ip, vm.mac, p.get("binding:host_id", ""),
                         p.get("status", "?")])
        vms = table(["vm", "tenant", "network", "hypervisor", "ip", "mac", "bound to",
                     "status"], rows)
        registered = {h["id"]: h for h in self.api.list("host")}
        hrows = []
        for hv in self.hvs:
            flows = [f for f in hv.ofctl("dump-flows", "br-int").splitlines() if "cookie=" in f]
            status = registered.get(hv.name, {}).get("status")
            hrows.append([hv.name, hv.mgmt_ip, hv.tunnel_ip, status, len(flows)])
        hosts = table(["hypervisor", "mgmt ip", "tunnel ip", "host status", "flows"], hrows)
        return f"{vms}\n\n{hosts}"

    def ping_matrix(self, same_deadline: float = 3.0, other_deadline: float = 1.0,
                    workers: int = 48) -> tuple[bool, str]:
        """Every ordered VM pair pings (in parallel); ok iff exactly same-tenant pairs answer.

        Same-tenant pairs go first with a deadline long enough for ARP retries and OVS'
        tunnel neighbour resolution; then, with every cache warm, a leak across tenants would
        answer within milliseconds, so the other pairs get a shorter deadline."""
        same = [(a, b) for a, b in itertools.permutations(self.vms, 2) if a.tenant is b.tenant]
        other = [(a, b) for a, b in itertools.permutations(self.vms, 2)
                 if a.tenant is not b.tenant]

        def probe(pair: tuple[Vm, Vm], deadline: float) -> tuple[str, str, bool, str]:
            src, dst = pair
            cp = subprocess.run(["mnexec", "-a", str(src.host.pid), "ping", "-n", "-q", "-c",
                                 "1", "-i", "0.2", "-w", f"{deadline:g}", dst.ip],
                                capture_output=True, text=True, timeout=deadline + 10)
            return src.name, dst.name, cp.returncode == 0, (cp.stdout + cp.stderr).strip()

        results = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for pairs, deadline in ((same, same_deadline), (other, other_deadline)):
                results += pool.map(lambda p, d=deadline: probe(p, d), pairs)
        pairs = same + other
        got = {(a, b): ok for a, b, ok, _ in results}
        outputs = {(a, b): out for a, b, _, out in results}
        tenant = {vm.name: vm.tenant.name for vm in self.vms}
        names = [vm.name for vm in self.vms]
        rows, wrong, details = [], 0, []
        for src in names:
            row: list[object] = [f"{src} ({tenant[src]})"]
            for dst in names:
                if src == dst:
                    row.append("--")
                    continue
                exp, obs = tenant[src] == tenant[dst], got[(src, dst)]
                wrong += exp != obs
                cell = f"{'Y' if exp else 'N'}/{'Y' if obs else 'N'}"
                row.append(cell if exp == obs else cell + "!!")
                if exp != obs and len(details) < 3:
                    details.append(f"{src} -> {dst}: {outputs[(src, dst)]}")
            rows.append(row)
        ok = wrong == 0 and bool(pairs)
        text = "\n".join([
            "ping matrix: cell = expected/observed (Y = ping answered); !! marks a mismatch",
            table(["from \\ to", *names], rows),
            f"MATRIX {'PASS' if ok else 'FAIL'}: {len(pairs) - wrong}/{len(pairs)} pairs as "
            "expected (same tenant reachable, other tenants isolated)",
            *details,
        ])
        return ok, text

    def cli(self) -> None:
        print(f"\nREST API: {self.api.base}   controller log: {self.ctl.log_path}")
        print("CLI extras: `matrix` (parallel ping matrix with expectations), `tenants`, "
              "`pingall` (1 s timeout by default).  `exit` or Ctrl-D tears everything down.\n",
              flush=True)
        setLogLevel("output")
        TenantCLI(self.net, lab=self)

    # ------------------------------------------------------------------ teardown
    def close(self) -> list[str]:
        """Remove everything; idempotent.  Returns what could not be removed (empty = clean)."""
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}  # don't stop half-way
        try:
            return self._close()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _close(self) -> list[str]:
        problems: list[str] = []
        t0 = time.monotonic()
        if self.ctl is not None:
            try:
                # `tenantnet serve` could hang on exit after SIGTERM (os-ken's non-daemon
                # OpenFlow server thread): don't wait the harness' default 10 s for SIGKILL
                self.ctl.stop(timeout=2)
            except Exception as exc:  # keep tearing down
                problems.append(f"controller stop: {exc}")
            self.ctl = None
        if self.net is not None:
            nodes = self.net.hosts + self.net.switches
            self._node_pids = sorted({*self._node_pids, *(n.pid for n in nodes if n.pid)})
            try:
                self.net.stop()
            except Exception as exc:
                problems.append(f"mininet stop: {exc}")
            self.net = None
        # whatever Mininet's stop missed: our daemons (by their pids), our root links, node shells
        daemon_pids = [p for hv in self.hvs for p in hv.pids]
        terminate([p for p in daemon_pids + self._node_pids if pid_alive(p)], grace=2)
        if self._held is not None:  # we hold the lock: anything of ours is stale now
            remove_leftovers()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        deadline = time.monotonic() + 3
        while True:
            left = [p for p in daemon_pids + self._node_pids if pid_alive(p)]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if left:
            problems.append(f"processes still alive: {left}")
        if self._held is not None:
            rest = leftovers()
            problems += [f"{k}: {v}" for k, v in rest.items() if v]
            self._held.release()
            self._held = None
        self.cleanup_report = problems
        if self.timings:
            self.timings["teardown"] = time.monotonic() - t0
        return problems

    def tracked_pids(self) -> list[int]:
        return sorted({*self._node_pids, *(p for hv in self.hvs for p in hv.pids)})


class TenantCLI(CLI):
    """Mininet's CLI with a few tenantnet commands."""

    def __init__(self, mininet, lab: TenantLab, **kwargs) -> None:
        self.lab = lab
        CLI.__init__(self, mininet, **kwargs)

    def do_pingall(self, line: str) -> None:
        """Ping between all VMs (ping -c1 -W <timeout>, default 1 s)."""
        self.mn.pingAll(timeout=line.strip() or "1")

    def do_matrix(self, _line: str) -> None:
        """All VM pairs in parallel: expected (same tenant) vs observed reachability."""
        output(self.lab.ping_matrix()[1] + "\n")

    def do_tenants(self, _line: str) -> None:
        """VMs, their tenant, network, hypervisor, IP/MAC and port status; flows per host."""
        output(self.lab.summary() + "\n")


# ------------------------------------------------------------------------------------ main
def check_environment() -> None:
    if os.geteuid() != 0:
        raise TopoError("must run as root")
    for binary in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool", "mnexec",
                   "ethtool"):
        if shutil.which(binary) is None:
            raise TopoError(f"{binary} not found")


def _scenario(lab: TenantLab, build, test: bool) -> bool:
    lab.start()
    build(lab)
    took = lab.wait_active()
    step(f"all {len(lab.vms)} ports ACTIVE ({took:.2f} s after the last VM was plugged)")
    print(lab.summary(), flush=True)
    if not test:
        # also warms the VMs' ARP caches and the hypervisors' tunnel neighbour caches (OVS drops
        # the first packet towards a not yet resolved underlay IP), so that `pingall` with its
        # 1 s timeout shows exactly the intra-tenant pairs
        step("ping matrix before opening the CLI")
        print(lab.ping_matrix()[1], flush=True)
        lab.cli()
        return True
    step(f"ping matrix: {len(lab.vms) * (len(lab.vms) - 1)} pairs in parallel")
    t1 = time.monotonic()
    ok, text = lab.ping_matrix()
    lab.timings["matrix"] = time.monotonic() - t1
    print(text, flush=True)
    if not ok:
        print("\n--- controller log (tail) ---\n" + lab.ctl.log_tail(40), flush=True)
    return ok


def run(build, *, test: bool, n_hosts: int, pool_size: int, verbose: bool = False) -> int:
    """Bring up a TenantLab, let ``build(lab)`` add tenants and VMs, wait for ACTIVE ports, then
    ``--test`` (ping matrix, exit 0 iff as expected) or the Mininet CLI.  Always tears down:
    exit 130 on Ctrl-C, 128+N on signal N (SIGTERM, SIGHUP), 1 on failure."""
    install_signal_handlers()
    t0 = time.monotonic()
    lab = TenantLab(n_hosts, pool_size=pool_size, verbose=verbose)
    code = 1
    try:
        check_environment()
        try:
            code = 0 if _scenario(lab, build, test) else 1
        except Exception as exc:  # report while the controller's log is still there
            if not isinstance(exc, TopoError):
                traceback.print_exc()
            if lab.ctl is not None:
                print("\n--- controller log (tail) ---\n" + lab.ctl.log_tail(40))
            print(f"\nFAIL: {type(exc).__name__}: {exc}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", flush=True)
        code = 130
    except Terminated as exc:
        print(f"\nterminated (signal {exc.args[0]}): tearing down", flush=True)
        code = 128 + exc.args[0]
    except TopoError as exc:
        print(f"FAIL: {exc}", flush=True)
    finally:
        step("tearing down")
        problems = lab.close()
    timings = " ".join(f"{k}={v:.1f}s" for k, v in lab.timings.items())
    print(f"timings: {timings} total={time.monotonic() - t0:.1f}s")
    if problems:
        print("CLEANUP FAIL: " + "; ".join(problems))
        code = code or 1
    else:
        print(f"cleanup: ok, tracked pids gone: {' '.join(map(str, lab.tracked_pids()))}")
    if test:
        print(f"RESULT: {'PASS' if code == 0 else 'FAIL'}")
    return code


def cleanup_main() -> int:
    """``--cleanup``: remove what a killed run left behind (waits for a running one to finish)."""
    lab = TenantLab(1)
    lab._lock()
    try:
        remove_leftovers(verbose=True)
        rest = leftovers()
    finally:
        lab.close()
    print("nothing left" if not any(rest.values()) else f"still there: {rest}")
    return 0 if not any(rest.values()) else 1


def pool_size_for(vms_per_tenant: int) -> int:
    return max(10, 10 * math.ceil(vms_per_tenant / 10))
