"""Issue 15's measures, the same work for both systems: native DHCP and the ARP responder.

* **Lease latency**: busybox ``udhcpc``, then ISC ``dhclient`` (real clients, the same
  binaries and flags for both) in VM namespaces spread over the hosts get a lease
  ``leases_per_vm`` times in a row each; a capture on the VM's ``eth0`` (tcpdump ``-tt``)
  timestamps each DISCOVER and the ACK that ends its exchange, so the figure is DISCOVER ->
  ACK on the wire as the VM sees it (the client's OFFER -> REQUEST turnaround included,
  process start-up not).  udhcpc's turnaround is ~30 ms of its own kernel waits (`exchanges`);
  dhclient keeps its packet socket open and requests at once, so its DISCOVER -> ACK is
  nearly all the servers' work.  tenantnet answers through
  packet-in to the controller over the management network; OVN from ovn-controller on the
  VM's own host (``pinctrl``), with ``DHCP_Options`` for the subnet and each port's
  ``dhcpv4_options``, as Neutron's OVN driver writes them.
* **Sustained exchanges/s**: every DHCP VM runs `bench.dhcp_load` (unicast renewals, closed
  loop, ``window`` in flight) at once; meanwhile new ports are created one after the other and
  their port-ready latency is measured as in measure 1 (`bench.scenario.latency`).  The
  control plane's CPU over the load is reported in cores.
* **ARP, first ping**: pairs of new VMs on hv1 and hv2; the first ``ping`` from one to the
  other with empty neighbour caches (the request is answered by flows on the asker's host,
  by both systems), with neighbours pre-seeded both ways (no ARP at all), and to an
  allowed-address-pair address of the target, which neither system answers from flows (the
  request floods through the tunnel and the VM answers: the path without a responder; neither
  system can switch its responder off for a fixed IP).  ping's time of the first echo
  includes the address resolution it waited for.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, log, static_neigh
from bench.scenario import fresh_system, latency, setup_base
from bench.stats import median
from lab.hypervisors import Vm
from lab.proc import base_env, ns_cmd
from lab.traffic import Capture

_TS = re.compile(r"^(\d+\.\d+) ")
_MSG = re.compile(r"DHCP-Message \(53\), length 1: (\w+)")


def dhcp_vms(system: Any, n: int) -> list[Vm]:
    """``n`` VMs in network 0 (10.100.252.<i>) round robin over every host, ports ACTIVE."""
    lab = system.lab
    vms = []
    for i in range(1, n + 1):
        hv_n = 1 + (i - 1) % len(lab.hvs)
        name, mac, ip = f"dh{i}", f"0a:00:00:02:{i >> 8:02x}:{i & 255:02x}", f"10.100.252.{i}"
        vms.append(lab.add_vm(hv_n, name, mac, f"{ip}/16", system.iface_id(name)))
    system.create_ports_wait([(0, vm.name, vm.mac, vm.ip) for vm in vms])
    return vms


def exchanges(lines: list[str]) -> list[dict[str, float]]:
    """DISCOVER -> ACK times (ms) from ``tcpdump -tt -v`` lines, from the first DISCOVER after
    the previous ACK (retransmissions count against the server) to the next ACK, with its
    parts: DISCOVER -> OFFER (server), OFFER -> REQUEST (client), REQUEST -> ACK (server), and
    the server's share (the two server parts added).

    The client's part is busybox's own turnaround, 15-40 ms here for both systems: to send
    each message udhcpc opens an AF_PACKET socket and binds it to the interface, and that
    ``bind`` re-registers the socket's packet hook, which waits for an RCU grace period
    (``synchronize_net``; strace -T: 7-15 ms per bind here).  Grace periods end on a timer
    tick (HZ=250: 4 ms), so DISCOVER -> REQUEST comes in 4 ms steps (76-85% of 240 leases per
    system within 0.5 ms of a multiple of 4 ms), the same for both systems: a later OFFER
    only makes the next step likelier (the mean DISCOVER -> REQUEST grows by the mean
    DISCOVER -> OFFER), and REQUEST -> ACK adds directly.  So the median of 30 leases moves
    in 4 ms steps from run to run while the server's share is what the systems differ in;
    over 8 runs (240 leases each) the means of the client's part were equal (27.1 / 27.0 ms)
    and the difference of the mean DISCOVER -> ACK was the difference of the server's share."""
    out: list[dict[str, float]] = []
    ts, marks = None, {}  # type: ignore[var-annotated]
    for line in lines:
        m = _TS.match(line)
        if m:
            ts = float(m.group(1))
            continue
        m = _MSG.search(line)
        if not m or ts is None:
            continue
        kind = m.group(1)
        if kind == "Discover" and not marks:
            marks = {"Discover": ts}
        elif marks and kind in ("Offer", "Request") and kind not in marks:
            marks[kind] = ts
        elif kind == "ACK" and marks:
            ms = lambda a, b: round((b - a) * 1000, 3)  # noqa: E731
            ex = {"total": ms(marks["Discover"], ts)}
            if "Offer" in marks:
                ex["offer"] = ms(marks["Discover"], marks["Offer"])
                if "Request" in marks:
                    ex["client"] = ms(marks["Offer"], marks["Request"])
            if "Request" in marks:
                ex["ack"] = ms(marks["Request"], ts)
                if "offer" in ex:
                    ex["server"] = round(ex["offer"] + ex["ack"], 3)
            out.append(ex)
            marks = {}
    return out


def _udhcpc_lease(vm: Vm, workdir: str) -> None:
    # -s /bin/true: keep the static address (the lease itself is not applied)
    vm.exec("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
            "-s", "/bin/true", check=False, timeout=30)  # fmt: skip


def _dhclient_lease(vm: Vm, workdir: str) -> None:
    """One lease by ISC ``dhclient`` from INIT (a fresh lease file: DISCOVER, not a reboot's
    REQUEST).  ``-1`` returns once bound (dhclient then stays in the background to renew: it
    is stopped by its pid file's path on its command line before the next lease)."""
    lf, pf = f"{workdir}/dhclient-{vm.name}.leases", f"{workdir}/dhclient-{vm.name}.pid"
    Path(lf).unlink(missing_ok=True)
    try:
        vm.exec("dhclient", "-1", "-sf", "/bin/true", "-lf", lf, "-pf", pf, "eth0",
                check=False, timeout=30)  # fmt: skip
    finally:
        subprocess.run(["pkill", "-KILL", "-f", pf], check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and subprocess.run(
            ["pgrep", "-f", pf], stdout=subprocess.DEVNULL, check=False
        ).returncode == 0:
            time.sleep(0.01)


CLIENTS = {"udhcpc": _udhcpc_lease, "dhclient": _dhclient_lease}


def lease_latency(vms: list[Vm], per_vm: int, workdir: str,
                  client: str = "udhcpc") -> dict[str, list[float]]:
    """``per_vm`` leases in a row by ``client`` (`CLIENTS`) in each VM (one VM at a time): per
    lease, the DISCOVER -> ACK time and its parts (see `exchanges`), in ms."""
    out: dict[str, list[float]] = {"total": [], "offer": [], "client": [], "ack": [],
                                   "server": []}
    take = CLIENTS[client]
    for vm in vms:
        cap = Capture(vm.ns, "eth0", f"{workdir}/dhcp-{client}-{vm.name}.txt",
                      bpf="udp and (port 67 or port 68)", count=100_000, timeout=600,
                      extra_args=("-tt", "-v"))  # fmt: skip
        try:
            for _ in range(per_vm):
                take(vm, workdir)
            time.sleep(0.1)
        finally:
            cap.stop()
        got = exchanges(cap.wait())
        if len(got) < per_vm:
            log(f"{vm.name}: {per_vm - len(got)} of {per_vm} leases without an ACK")
        for ex in got:
            for k, v in ex.items():
                out[k].append(v)
    return out


class DhcpLoad:
    """`bench.dhcp_load` in every given VM at once; ``stop()`` -> aggregated figures."""

    def __init__(self, vms: list[Vm], server: tuple[str, str], window: int) -> None:
        env = {**base_env(), "PYTHONPATH": str(REPO)}
        self.procs = []
        for i, vm in enumerate(vms, start=1):
            cmd = [sys.executable, "-m", "bench.dhcp_load", "--mac", vm.mac, "--ip", vm.ip,
                   "--server-mac", server[0], "--server-ip", server[1],
                   "--window", str(window), "--seed", str(i)]  # fmt: skip
            self.procs.append(subprocess.Popen(
                ns_cmd(vm.ns, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, cwd=REPO, env=env))

    def stop(self) -> dict[str, Any]:
        res = []
        for p in self.procs:
            out, err = p.communicate(input="", timeout=30)
            try:
                res.append(json.loads(out.strip().splitlines()[-1]))
            except (IndexError, ValueError):
                raise RuntimeError(f"dhcp_load failed: {err[-500:]}") from None
        secs = max(r["seconds"] for r in res)
        acks = sum(r["acks"] for r in res)
        return {"clients": len(res), "seconds": secs, "acks": acks,
                "naks": sum(r["naks"] for r in res), "lost": sum(r["lost"] for r in res),
                "acks_per_s": round(acks / secs, 1) if secs else None,
                "lat_ms_median": median(r["lat_ms_median"] for r in res)}


def dhcp_load(system: Any, vms: list[Vm], window: int, n_ports: int) -> dict[str, Any]:
    """Every VM renews at once while ``n_ports`` new ports are created one after the other."""
    cpu0 = system.control_plane_cpu()
    t0 = time.monotonic()
    load = DhcpLoad(vms, system.dhcp_server(0), window)
    try:
        time.sleep(1.0)  # the load runs before the first port is created
        ref = [system.lab.vms["vm1"], system.lab.vms["vm2"]]
        lat = latency(system, ref, n_ports, "port-ready under DHCP load")
    finally:
        res = load.stop()
    cpu = system.control_plane_cpu() - cpu0
    res["control_plane_cores"] = round(cpu / (time.monotonic() - t0), 2)
    res["ready_ms"] = lat["ready_ms"]
    res["ping_ms"] = lat["ping_ms"]
    if hasattr(system, "packet_in_counters"):  # tenantnet: where lost renewals went
        res["packet_in"] = system.packet_in_counters()
    log(f"{system.name} DHCP load: {res['acks_per_s']} ACKs/s from {res['clients']} clients, "
        f"lost {res['lost']}, NAKs {res['naks']}, CPU {res['control_plane_cores']} cores"
        + (f", packet-in {res['packet_in']}" if "packet_in" in res else ""))
    return res


def first_ping_ms(a: Vm, ip: str) -> float | None:
    """The time ``ping`` reports for its first echo from ``a`` to ``ip`` (None: no reply)."""
    cp = a.exec("ping", "-n", "-c", "1", "-W", "3", ip, check=False, timeout=10)
    m = re.search(r"time=([0-9.]+) ms", cp.stdout)
    return float(m.group(1)) if m else None


ARP_MODES = ("arp_ms", "static_ms", "flood_ms")


def arp_first_ping(system: Any, pairs: int) -> dict[str, list[float | None]]:
    """``pairs`` pairs of new VMs (hv1 -> hv2) per mode: ``arp_ms`` neighbours empty, the
    target's fixed IP (answered by flows on the asker's host); ``static_ms`` neighbours
    pre-seeded both ways (no ARP); ``flood_ms`` neighbours empty, the target's second address,
    an allowed address pair, which neither system answers from flows: the request crosses the
    tunnel and the target VM answers (the path without a responder)."""
    lab = system.lab
    out: dict[str, list[float | None]] = {m: [] for m in ARP_MODES}
    made = []
    for i in range(len(ARP_MODES) * pairs):
        mode = ARP_MODES[i % len(ARP_MODES)]
        pair = []
        for side, hv_n in ((0, 1), (1, 2)):
            j = 2 * i + side + 2
            name, mac = f"ar{j}", f"0a:00:00:03:{j >> 8:02x}:{j & 255:02x}"
            pair.append(lab.add_vm(hv_n, name, mac, f"10.100.251.{j}/16", system.iface_id(name)))
        second = f"10.100.248.{i + 2}" if mode == "flood_ms" else None
        for vm in pair:
            system.create_ports_wait([(0, vm.name, vm.mac, vm.ip)],
                                     pair_ip=second if vm is pair[1] else None)
        if second:
            pair[1].exec("ip", "addr", "add", f"{second}/16", "dev", "eth0")
        made.append((mode, pair[0], pair[1], second or pair[1].ip))
    time.sleep(0.5)
    for mode, a, b, ip in made:
        if mode == "static_ms":
            static_neigh(a.ns, b.ip, b.mac)
            static_neigh(b.ns, a.ip, a.mac)
        out[mode].append(first_ping_ms(a, ip))
    log(f"{system.name} ARP first ping: {out}")
    return out


def run_dhcp_arp(system: Any, sc: dict[str, Any]) -> dict[str, Any]:
    """One run on a fresh lab and control plane; torn down at the end."""
    with fresh_system(system, sc) as m:
        setup_base(system, 1)
        system.enable_dhcp(0)
        vms = dhcp_vms(system, sc["dhcp_vms"])
        for key, client in (("lease", "udhcpc"), ("lease_dhclient", "dhclient")):
            m[key] = lease = lease_latency(vms, sc["leases_per_vm"], system.lab.workdir,
                                           client)  # fmt: skip
            log(f"{system.name}: {len(lease['total'])} {client} leases, median ms: "
                f"DISCOVER->ACK {median(lease['total'])} = DISCOVER->OFFER "
                f"{median(lease['offer'])} + client {median(lease['client'])} + REQUEST->ACK "
                f"{median(lease['ack'])}")
        m["load"] = dhcp_load(system, vms, sc["window"], sc["load_ports"])
        m["arp"] = arp_first_ping(system, sc["arp_pairs"])
    return m
