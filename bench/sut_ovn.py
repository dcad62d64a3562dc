"""OVN 23.03 as the peer: the same kind of Lab, OVN central in the root namespace and one
ovn-controller per emulated hypervisor (inside its namespace, ``OVS_RUNDIR`` = its OVS dir).

* NB ovsdb-server: unix socket only (only ovn-nbctl and northd use it);
* SB ovsdb-server: unix socket + ``ptcp:6642:<lab mgmt ip>`` (ovn-controllers connect over the
  management network, as tenantnet's hosts reach the tenantnet controller);
* ovn-northd on both unix sockets;
* per hypervisor: ``external_ids:ovn-remote/ovn-encap-type/ovn-encap-ip/
  ovn-bridge-datapath-type=netdev`` (``system-id`` is already the hypervisor name); ovn-controller
  creates ``br-int`` itself.

Everything lives under the lab's work dir, so `Lab.close()` stops it all (pidfiles there).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import time
from typing import Any

from bench.common import (
    OVN_LAB,
    ConfirmTimeout,
    cpu_seconds,
    fresh_flows,
    gateway_ip,
    log,
    rss_kb,
)
from lab.hypervisors import Hypervisor, Lab
from lab.proc import CommandError, base_env, pid_alive, read_pidfile, run

NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"
SB_SCHEMA = "/usr/share/ovn/ovn-sb.ovsschema"


def ovn_installed() -> bool:
    path = base_env()["PATH"]
    tools = ("ovn-nbctl", "ovn-sbctl", "ovn-northd", "ovn-controller")
    return all(shutil.which(b, path=path) for b in tools) and all(
        os.path.exists(s) for s in (NB_SCHEMA, SB_SCHEMA))


class OvnSystem:
    name = "ovn"
    central_procs: tuple[str, ...] = ("northd", "nb", "sb")  # pidfiles in the central dir
    flow_mods_source = ("n/a: ovn-controller 23.03 has no flow-mod counter (its coverage "
                        "counters stay at 0 here); see the switch-observed row below")
    # Ports per ovn-nbctl transaction of a bulk, as tenantnet's 1,000 ports per request: one
    # command line for 5,000 ports with their port-group memberships (~20 arguments, ~350
    # bytes each) exceeds the kernel's limit on exec arguments (E2BIG)
    TXN_PORTS = 1000

    def __init__(self, n_hosts: int, encap: str = "geneve", security_groups: bool = False,
                 lab_kwargs: dict[str, str] | None = None) -> None:
        self.n_hosts = n_hosts
        self.security_groups_at_start = security_groups
        self.encap = encap
        self.lab = Lab(n_hosts, **(lab_kwargs or OVN_LAB))
        self.central = ""
        self.nbctl_daemon = ""
        self.nets: dict[int, str] = {}
        self.dhcp: dict[int, str] = {}  # network index -> DHCP_Options row
        self.projects: dict[int, str] = {}  # network index -> project (security groups)
        self.sg = False  # Neutron's security-group port groups and ACLs (enable_security_groups)
        self.pgs: set[str] = set()  # port groups created

    # ------------------------------------------------------------------ helpers
    @property
    def nb_db(self) -> str:
        """The NB database as its clients (ovn-nbctl, northd) name it."""
        return f"unix:{self.central}/nb.sock"

    @property
    def sb_db(self) -> str:
        """The SB database as ovn-sbctl and northd name it."""
        return f"unix:{self.central}/sb.sock"

    @property
    def sb_remote(self) -> str:
        """The SB database as the ovn-controllers reach it (over the management network)."""
        return f"tcp:{self.lab.mgmt_ip}:6642"

    def nbctl(self, *args: str, timeout: float = 600, direct: bool = False) -> str:
        """ovn-nbctl through its daemon (a persistent NB connection, as Neutron's OVN driver
        keeps one: a one-shot ovn-nbctl would download the NB database on every call)."""
        if self.nbctl_daemon and not direct:
            return run("ovn-nbctl", f"--timeout={int(timeout)}", *args, timeout=timeout + 10,
                       env={"OVN_NB_DAEMON": self.nbctl_daemon}).stdout.strip()
        return run("ovn-nbctl", f"--db={self.nb_db}", f"--timeout={int(timeout)}",
                   *args, timeout=timeout + 10).stdout.strip()

    def sbctl(self, *args: str, timeout: float = 60) -> str:
        return run("ovn-sbctl", f"--db={self.sb_db}", f"--timeout={int(timeout)}",
                   *args, timeout=timeout + 10).stdout.strip()

    def _ctl_pid(self, hv: Hypervisor) -> int | None:
        pid = read_pidfile(f"{hv.dir}/ovn-controller.pid")
        return pid if pid and pid_alive(pid) else None

    def _central_pid(self, what: str) -> int | None:
        pid = read_pidfile(f"{self.central}/{what}.pid")
        return pid if pid and pid_alive(pid) else None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        t0 = time.monotonic()
        self.lab.start()
        self.central = os.path.join(self.lab.workdir, "central")
        os.makedirs(self.central, exist_ok=True)
        self._start_central()
        self.nbctl("--wait=sb", "sync", timeout=30)
        self._start_nbctl_daemon()
        for hv in self.lab.hvs:
            hv.vsctl("set", "Open_vSwitch", ".",
                     f"external_ids:ovn-remote={self.sb_remote}",
                     f"external_ids:ovn-encap-type={self.encap}",
                     f"external_ids:ovn-encap-ip={hv.tunnel_ip}",
                     "external_ids:ovn-bridge-datapath-type=netdev")
            self._start_ovn_controller(hv)
        deadline = time.monotonic() + 60
        while True:
            chassis = self.sbctl("--bare", "--columns=name", "list", "Chassis").split()
            if len(chassis) >= self.n_hosts and all(hv.has_bridge() for hv in self.lab.hvs):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"OVN: only chassis {chassis} registered after 60 s")
            time.sleep(0.1)
        for hv in self.lab.hvs:
            hv.wait_bridge("br-int", timeout=30)
        self.nbctl("--wait=hv", "sync", timeout=60)
        if self.security_groups_at_start:
            self.enable_security_groups()
        log(f"ovn: {self.n_hosts} chassis up in {time.monotonic() - t0:.1f} s")

    def _start_central(self) -> None:
        """One NB and one SB ovsdb-server (standalone databases) and one ovn-northd."""
        c = self.central
        for db, schema, tcp in (("nb", NB_SCHEMA, None), ("sb", SB_SCHEMA, 6642)):
            run("ovsdb-tool", "create", f"{c}/{db}.db", schema)
            remotes = [f"--remote=punix:{c}/{db}.sock"]
            if tcp:
                remotes.append(f"--remote=ptcp:{tcp}:{self.lab.mgmt_ip}")
            run("ovsdb-server", f"{c}/{db}.db", "-vconsole:off", "-vfile:info", *remotes,
                f"--pidfile={c}/{db}.pid", f"--unixctl={c}/{db}.ctl",
                f"--log-file={c}/{db}.log", "--detach", "--no-chdir")
        self._start_northd("northd")

    def _start_northd(self, name: str) -> None:
        c = self.central
        run("ovn-northd", f"--ovnnb-db={self.nb_db}", f"--ovnsb-db={self.sb_db}",
            "-vconsole:off", f"--pidfile={c}/{name}.pid", f"--unixctl={c}/{name}.ctl",
            f"--log-file={c}/{name}.log", "--detach", "--no-chdir")

    def _start_nbctl_daemon(self) -> None:
        c = self.central
        pid = read_pidfile(f"{c}/nbctl.pid")
        if pid and pid_alive(pid):  # a daemon stuck in a --wait: replace it
            os.kill(pid, signal.SIGTERM)
            while pid_alive(pid):
                time.sleep(0.02)
        self.nbctl_daemon = run(
            "ovn-nbctl", f"--db={self.nb_db}", f"--pidfile={c}/nbctl.pid", "--detach",
            "--no-chdir", "-vconsole:off", f"--log-file={c}/nbctl.log", env={"OVN_RUNDIR": c},
        ).stdout.strip()

    def _start_ovn_controller(self, hv: Hypervisor) -> None:
        d = hv.dir
        run("ovn-controller", f"unix:{d}/db.sock", "-vconsole:off", "-vfile:info",
            f"--pidfile={d}/ovn-controller.pid", f"--log-file={d}/ovn-controller.log",
            "--detach", "--no-chdir", ns=hv.ns, env={**hv.env, "OVN_RUNDIR": d})

    def stop(self) -> None:
        self.lab.close()
        self.nbctl_daemon = ""

    def log_tail(self) -> str:
        out = []
        logs = sorted(glob.glob(f"{self.lab.workdir}/*/ovn-controller.log"))[:2]
        for f in [*logs, f"{self.central}/northd.log"]:
            try:
                with open(f) as fh:
                    out.append(f"--- {f}\n" + "".join(fh.readlines()[-15:]))
            except OSError:
                pass
        return "\n".join(out)

    # ------------------------------------------------------------------ model
    def iface_id(self, name: str) -> str:
        return name

    def add_network(self, k: int, project: str = "bench", gateway: bool = False) -> None:
        """Logical switch ``bls<k>`` (a switch has no gateway: ``gateway`` is the address its
        router port takes, `add_interface`)."""
        ls = f"bls{k}"
        self.nbctl("--wait=hv", "ls-add", ls)
        self.nets[k] = ls
        self.projects[k] = project
        if self.sg:
            self._default_group(project)

    # ------------------------------------------------------------------ routers
    # What Neutron's OVN driver writes for a distributed router (no gateway chassis: east-west
    # is routed on the sending chassis): a Logical_Router, and per interface a
    # Logical_Router_Port with the interface's MAC and gateway address plus the switch's
    # port of type router (addresses "router", options:router-port), in one transaction and
    # without --wait, as Neutron does.
    def create_router(self) -> str:
        self.nbctl("lr-add", "blr0")
        return "blr0"

    @staticmethod
    def router_mac(k: int) -> str:
        return f"fa:16:3e:fe:{k >> 8 & 255:02x}:{k & 255:02x}"

    def add_interface(self, router: str, k: int) -> None:
        lrp, lsp = f"lrp-bls{k}", f"rp-bls{k}"
        self.nbctl("lrp-add", router, lrp, self.router_mac(k), f"{gateway_ip(k)}/16",
                   "--", "lsp-add", self.nets[k], lsp,
                   "--", "lsp-set-type", lsp, "router",
                   "--", "lsp-set-addresses", lsp, "router",
                   "--", "lsp-set-options", lsp, f"router-port={lrp}")  # fmt: skip

    def wait_idle(self, timeout: float = 120) -> None:
        """Until every chassis has what the NB holds (``--wait=hv sync``)."""
        self.nbctl("--wait=hv", "sync", timeout=timeout)

    def remove_interface(self, router: str, k: int) -> None:
        self.nbctl("lrp-del", f"lrp-bls{k}", "--", "lsp-del", f"rp-bls{k}")

    # ------------------------------------------------------------------ security groups
    # What Neutron's OVN driver writes (neutron/common/ovn/acl.py): a port group per security
    # group (``pg_<id>``; northd derives the address sets ``$pg_<id>_ip4/_ip6`` of its
    # members), one ACL per rule at priority 1002 with ``allow-related``, and every port with
    # port security in ``neutron_pg_drop``, whose two ACLs (priority 1001) drop all other IP.
    DROP_PG = "neutron_pg_drop"

    def enable_security_groups(self) -> None:
        """From now on ports with port security join their project's default group."""
        if self.sg:
            return
        self.sg = True
        self.nbctl("pg-add", self.DROP_PG,
                   "--", "--type=port-group", "acl-add", self.DROP_PG, "from-lport", "1001",
                   f"inport == @{self.DROP_PG} && ip", "drop",
                   "--", "--type=port-group", "acl-add", self.DROP_PG, "to-lport", "1001",
                   f"outport == @{self.DROP_PG} && ip", "drop")  # fmt: skip
        for project in sorted(set(self.projects.values())):
            self._default_group(project)

    def _default_group(self, project: str) -> str:
        pg = f"pg_{project}_default"
        if pg not in self.pgs:
            self._new_group(pg)
            # Neutron's default-group template: ingress from the group's own members
            for eth in ("IPv4", "IPv6"):
                self.add_rule(pg, "ingress", remote_group=pg, ethertype=eth)
        return pg

    def _new_group(self, pg: str) -> None:
        """A port group with Neutron's template for every group: egress anywhere."""
        self.nbctl("pg-add", pg)
        self.pgs.add(pg)
        for eth in ("IPv4", "IPv6"):
            self.add_rule(pg, "egress", ethertype=eth)

    def default_group(self, k: int) -> str:
        return self._default_group(self.projects[k])

    def create_group(self, k: int, name: str) -> str:
        pg = f"pg_{self.projects[k]}_{name}"
        self._new_group(pg)
        return pg

    @staticmethod
    def acl_match(pg: str, direction: str, protocol: str | None,
                  ports: tuple[int, int] | None, remote_ip: str | None,
                  remote_group: str | None, ethertype: str = "IPv4") -> str:
        """The match Neutron's OVN driver builds for one rule (acl.py: acl_direction,
        acl_ethertype, acl_remote_ip_prefix / acl_remote_group_id, acl_protocol_and_ports)."""
        ingress = direction == "ingress"
        ip = "ip4" if ethertype == "IPv4" else "ip6"
        m = [f"{'outport' if ingress else 'inport'} == @{pg}", ip]
        field = f"{ip}.src" if ingress else f"{ip}.dst"
        if remote_ip:
            m.append(f"{field} == {remote_ip}")
        if remote_group:
            m.append(f"{field} == ${remote_group}_{ip}")
        if protocol in ("tcp", "udp"):
            m.append(protocol)
            if ports:
                lo, hi = ports
                m.append(f"{protocol}.dst == {lo}" if lo == hi else
                         f"{protocol}.dst >= {lo} && {protocol}.dst <= {hi}")
        elif protocol == "icmp":
            m.append("icmp4")
        return " && ".join(m)

    def add_rule(self, group: str, direction: str, protocol: str | None = None,
                 ports: tuple[int, int] | None = None, remote_ip: str | None = None,
                 remote_group: str | None = None, ethertype: str = "IPv4") -> None:
        """One ACL as Neutron writes it for a rule (no --wait: Neutron does not wait)."""
        match = self.acl_match(group, direction, protocol, ports, remote_ip, remote_group,
                               ethertype)
        self.nbctl("--type=port-group", "acl-add", group,
                   "to-lport" if direction == "ingress" else "from-lport", "1002", match,
                   "allow-related")

    def enable_dhcp(self, k: int) -> None:
        """OVN native DHCP for network ``k`` as Neutron's OVN driver configures it: one
        ``DHCP_Options`` row for the subnet; ports created afterwards point their
        ``dhcpv4_options`` at it.  The options match what tenantnet sends for the same subnet
        (no gateway: no router; server id = the last unicast address; same server MAC)."""
        mac, ip = self.dhcp_server(k)
        self.dhcp[k] = self.nbctl("create", "DHCP_Options", f"cidr=10.{100 + k}.0.0/16",
                                  "options:lease_time=43200", f"options:server_id={ip}",
                                  f'options:server_mac="{mac}"', "options:mtu=1442")

    def dhcp_server(self, k: int) -> tuple[str, str]:
        return "02:7e:4e:00:00:01", f"10.{100 + k}.255.254"

    def _lsp_args(self, k: int, name: str, mac: str, ip: str, groups: list[str] | None = None,
                  port_security: bool = True, pair_ip: str | None = None) -> list[str]:
        """``pair_ip``: an allowed address pair (Neutron puts it in port_security only, so
        OVN's ARP responder does not answer for it)."""
        sec = f"{mac} {ip}" + (f" {pair_ip}" if pair_ip else "")
        if self.sg:
            return self._lsp_create_args(k, name, mac, ip, groups, port_security, sec)
        # what Neutron's OVN driver writes for a port with port security on
        args = ["--", "lsp-add", self.nets[k], name,
                "--", "lsp-set-addresses", name, f"{mac} {ip}"]
        if port_security:
            args += ["--", "lsp-set-port-security", name, sec]
        if k in self.dhcp:
            args += ["--", "lsp-set-dhcpv4-options", name, self.dhcp[k]]
        return args

    def _lsp_create_args(self, k: int, name: str, mac: str, ip: str, groups: list[str] | None,
                         port_security: bool, sec: str) -> list[str]:
        """The port and its port-group memberships in one transaction, as Neutron's IDL
        writes them: its groups (default: the project's default group) and
        ``neutron_pg_drop``; port security off: neither."""
        ref = f"@p_{name.replace('-', '_')}"
        cols = [f"name={name}", f'addresses="{mac} {ip}"']
        if port_security:
            cols.append(f'port_security="{sec}"')
        if k in self.dhcp:
            cols.append(f"dhcpv4_options={self.dhcp[k]}")
        args = ["--", f"--id={ref}", "create", "Logical_Switch_Port", *cols,
                "--", "add", "Logical_Switch", self.nets[k], "ports", ref]
        if port_security:
            pgs = groups if groups is not None else [self._default_group(self.projects[k])]
            for pg in [*pgs, self.DROP_PG]:
                args += ["--", "add", "Port_Group", pg, "ports", ref]
        return args

    def create_ports_wait(self, ports: list[tuple[int, str, str, str]], poll: float = 0.05,
                          timeout: float = 600, groups: list[str] | None = None,
                          port_security: bool = True, pair_ip: str | None = None) -> float:
        """The ports in ovn-nbctl transactions of at most `TXN_PORTS` ports, the last one with
        --wait=hv (which covers every earlier commit); seconds until it returns.

        Raises `ConfirmTimeout` when --wait=hv did not return within ``timeout`` (the ports
        are committed; one ``--wait=hv sync`` is tried so that later measures can go on)."""
        txns: list[list[str]] = []
        for i in range(0, len(ports), self.TXN_PORTS):
            args: list[str] = []
            for p in ports[i:i + self.TXN_PORTS]:
                args += self._lsp_args(*p, groups=groups, port_security=port_security,
                                       pair_ip=pair_ip)
            txns.append(args)
        t0 = time.perf_counter()
        for args in txns[:-1]:
            self.nbctl(*args, timeout=timeout)
        try:
            self.nbctl("--wait=hv", *txns[-1], timeout=timeout)
        except CommandError as exc:
            if len(ports) == 1:
                raise
            self._start_nbctl_daemon()  # the old one may still be blocked in that --wait
            cfg = self.sbctl("--bare", "--columns=name,nb_cfg", "list", "Chassis_Private")
            nb = self.nbctl("get", "NB_Global", ".", "nb_cfg", "hv_cfg", timeout=30, direct=True)
            try:
                self.nbctl("--wait=hv", "sync", timeout=120)
                after = f"a later --wait=hv sync returned after {time.perf_counter() - t0:.0f} s"
            except CommandError:
                self._start_nbctl_daemon()
                after = "a later --wait=hv sync did not return within 120 s either"
            raise ConfirmTimeout(
                f"ovn-nbctl --wait=hv did not return within {timeout:.0f} s for {len(ports)} "
                f"ports (NB nb_cfg/hv_cfg {' '.join(nb.split())}; chassis nb_cfg "
                f"{' '.join(cfg.split())}); {after}") from exc
        return time.perf_counter() - t0

    def flow_mods_total(self) -> int | None:
        return None

    # ------------------------------------------------------------------ measurements
    def control_plane_rss(self) -> dict[str, int]:
        out = {f"ovn-{w}": rss_kb(self._central_pid(w)) for w in self.central_procs}
        for hv in self.lab.hvs:
            out[f"ovn-controller-{hv.name}"] = rss_kb(self._ctl_pid(hv))
        return out

    def control_plane_cpu(self) -> float:
        t = sum(cpu_seconds(self._central_pid(w)) for w in self.central_procs)
        return t + sum(cpu_seconds(self._ctl_pid(hv)) for hv in self.lab.hvs)

    def kill_controller(self, hv_index: int) -> None:
        """kill -9 ovn-controller on that hypervisor (flows stay: br-int is fail_mode=secure)."""
        hv = self.lab.hv(hv_index)
        pid = self._ctl_pid(hv)
        if pid:
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.01)

    def start_controller(self, hv_index: int, before: set[str] | None = None,
                         timeout: float = 60) -> dict[str, Any]:
        """Start ovn-controller again; reconciled = ``--wait=hv sync`` returned and the host's
        flow table is back to ``before`` with flows installed by the new process.

        (``--wait=hv sync`` alone can return before the new ovn-controller even connected:
        its chassis' nb_cfg is still the old one.)"""
        hv = self.lab.hv(hv_index)
        t0 = time.monotonic()
        self._start_ovn_controller(hv)
        self.nbctl("--wait=hv", "sync", timeout=timeout)
        t_sync = time.monotonic() - t0
        # the new process clears the table and writes it again: done once as many flows as
        # before carry a duration younger than its start (or that number stopped growing)
        last, since, t_done = -1, time.monotonic(), None
        while before is not None and time.monotonic() - t0 < timeout:
            fresh = fresh_flows(hv, time.monotonic() - t0)
            if fresh >= len(before):
                t_done = time.monotonic()
                break
            if fresh != last:
                last, since = fresh, time.monotonic()
            elif fresh > 0 and time.monotonic() - since > 1.0:
                t_done = since
                break
            time.sleep(0.02)
        wall = max((t_done or time.monotonic()) - t0, t_sync)
        return {"reconcile_s": round(wall, 3), "wall_s": round(wall, 3),
                "sync_s": round(t_sync, 3), "flow_mods": None}

    # ------------------------------------------------------------------ data-plane baseline
    def baseline_on(self, vms: list[Any], vni: int = 5000, dst_port: int = 4789) -> None:
        """Stop ovn-controller on the VMs' hosts; hand-written flows + a flow-based VXLAN port."""
        hvs = [vm.hv for vm in vms]
        for hv in hvs:
            self.kill_controller(hv.n)
        for vm, other in ((vms[0], vms[1]), (vms[1], vms[0])):
            hv = vm.hv
            hv.vsctl("--may-exist", "add-port", "br-int", "vxb", "--", "set", "Interface", "vxb",
                     "type=vxlan", "options:remote_ip=flow", "options:key=flow",
                     f"options:dst_port={dst_port}")
            vxp = int(hv.vsctl("get", "Interface", "vxb", "ofport"))
            vmp = vm.ofport()
            hv.ofctl("del-flows", "br-int")
            hv.ofctl("add-flows", "br-int", "-", input="\n".join([
                f"table=0,priority=10,in_port={vmp},actions=set_field:{vni}->tun_id,"
                f"set_field:{other.hv.tunnel_ip}->tun_dst,output:{vxp}",
                f"table=0,priority=10,in_port={vxp},tun_id={vni},actions=output:{vmp}",
            ]) + "\n")

    def baseline_off(self, vms: list[Any]) -> None:
        for vm in vms:
            vm.hv.vsctl("--if-exists", "del-port", "br-int", "vxb")
            vm.hv.ofctl("del-flows", "br-int")
            self._start_ovn_controller(vm.hv)
        self.nbctl("--wait=hv", "sync", timeout=60)
