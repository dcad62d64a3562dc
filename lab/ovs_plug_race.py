"""Reproduce an OVS 3.1 userspace-datapath race without tenantnet: plugging an interface into a
bridge can drop a tunnelled packet of the same host.

``python -m lab.ovs_plug_race [--cycles 150] [--busy 2] [--event plug]`` (root, ~2.5 min): three
emulated hypervisors with a hand-made ``br-int`` each (a VXLAN port with ``remote_ip=flow``,
``key=flow`` and ``local_ip``, as tenantnet makes it) and two hand-written flows per VM, no
controller. vm1 (hv1) pings vm2 (hv2) every 2 ms while a spare veth is plugged into and
unplugged from br-int, ``--cycles`` times on hv1 (the pinging host), then as many times on hv3
(the control), with ``--busy`` busy-looping processes as CPU load. Measured on this 2-core
machine: 12 of 5,064 echoes lost with the plugs on hv1, 0 of 5,164 with them on hv3 (the same
with tenantnet's flows instead of these: 9-14 lost per 150 cycles on hv1, 0 on hv3); tcpdump
placed the losses on hv1 in both directions (a request that never reached the underlay, a reply
that reached hv1's underlay link and never vm1), and a ``dpctl/dump-flows`` poll caught vm1's
datapath flow with ``actions:drop`` instead of its ``tnl_push``.

``--event carrier`` takes hv's management veth down and up instead (its carrier, another link
event in vswitchd's namespace): 2 of 5,490 and 2 of 10,655 echoes lost over 150 and 300 cycles
on hv1, 0 on hv3.  ``--event partition`` is the lab's partition (`Lab.cut_mgmt`: the management
bridge port stops forwarding, nothing changes in the hypervisor's namespace): 0 of 7,260 on
hv1, 0 of 6,410 on hv3.

Why (OVS source, lib/route-table.c and lib/ovs-router.c, unchanged upstream): every netlink
link event in vswitchd's namespace - plugging a port sets it promiscuous - makes the main thread
rebuild its route cache by flushing it (local routes included) and dumping the kernel's again,
while the port add has the revalidator threads re-translate every datapath flow.  A translation
that runs inside that window finds no route to the tunnel's remote (or no local route for its
``local_ip``), emits no output action, and the datapath flow drops packets until the next
revalidation.  A user route (``ovs/route/add``) does not help: the source check wants a *local*
route, which only the flushed system table has.  The kernel datapath routes tunnels in the
kernel and is not affected.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import time

from lab import plans
from lab.hypervisors import Hypervisor, Lab, LabBusy, Vm

VNI = 1
SPARE = "spare0"


def _lab() -> Lab:
    for i in range(plans.SLOT_COUNT):
        with contextlib.suppress(LabBusy):
            return Lab(3, **plans.slot(i, plans.SLOT_BASE).lab_kwargs()).start()
    raise SystemExit("no free lab slot")


def _bridge(hv: Hypervisor) -> None:
    hv.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
             "fail_mode=secure", "protocols=OpenFlow13", "--", "add-port", "br-int", "vx",
             "--", "set", "Interface", "vx", "type=vxlan", "ofport_request=100",
             "options:remote_ip=flow", "options:key=flow", f"options:local_ip={hv.tunnel_ip}")
    hv.exec("ip", "link", "add", SPARE, "type", "veth", "peer", "name", SPARE + "p")
    for dev in (SPARE, SPARE + "p"):
        hv.exec("ip", "link", "set", dev, "up")


def _wire(vm: Vm, peer: Vm) -> None:
    """vm's frames go to peer's host over VXLAN; frames from the tunnel go to vm."""
    flows = (f"in_port={vm.ofport()},actions=set_field:{VNI}->tun_id,"
             f"set_field:{peer.hv.tunnel_ip}->tun_dst,output:100\n"
             f"in_port=100,tun_id={VNI},actions=output:{vm.ofport()}\n")
    vm.hv.ofctl("add-flows", "br-int", "-", input=flows)


def _event(lab: Lab, hv: Hypervisor, event: str, on: bool) -> None:
    """One half of a cycle: ``plug`` adds/removes a spare port on br-int, ``carrier`` takes the
    host's management veth down/up (its carrier, as the lab's partition did before), and
    ``partition`` is the lab's partition now (the management bridge port stops forwarding)."""
    if event == "plug":
        hv.vsctl("add-port" if on else "del-port", "br-int", SPARE)
    elif event == "carrier":
        subprocess.run(["ip", "link", "set", hv.mgmt_link, "down" if on else "up"], check=True)
    else:
        (lab.cut_mgmt if on else lab.heal_mgmt)(hv.n)


def _cycles(lab: Lab, vm1: Vm, plug_on: Hypervisor, cycles: int,
            event: str = "plug") -> tuple[int, int]:
    ping = vm1.ping_background(lab.vms["vm2"].ip, interval=0.002)
    time.sleep(0.5)
    for _ in range(cycles):
        _event(lab, plug_on, event, True)
        time.sleep(0.05)
        _event(lab, plug_on, event, False)
        time.sleep(0.05)
    time.sleep(0.5)
    stats = ping.stop()
    return stats.sent, stats.sent - stats.received


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=150)
    ap.add_argument("--busy", type=int, default=2, help="busy-looping processes (CPU load)")
    ap.add_argument("--event", choices=("plug", "carrier", "partition"), default="plug",
                    help="what each cycle does on the host (see _event)")
    args = ap.parse_args(argv)
    lab = _lab()
    load: list[subprocess.Popen[bytes]] = []
    try:
        for hv in lab.hvs:
            _bridge(hv)
        vm1 = lab.add_vm(1, "vm1", "02:00:00:00:00:01", "10.99.0.1/24", "vm1")
        vm2 = lab.add_vm(2, "vm2", "02:00:00:00:00:02", "10.99.0.2/24", "vm2")
        for vm in (vm1, vm2):
            vm.exec("ip", "neigh", "replace", (vm2 if vm is vm1 else vm1).ip, "lladdr",
                    (vm2 if vm is vm1 else vm1).mac, "dev", "eth0")
        _wire(vm1, vm2)
        _wire(vm2, vm1)
        vm1.wait_reachable(vm2.ip)
        load = [subprocess.Popen([sys.executable, "-c", "while 1: pass"])
                for _ in range(args.busy)]
        for where in (lab.hv(1), lab.hv(3)):
            sent, lost = _cycles(lab, vm1, where, args.cycles, args.event)
            role = "the pinging host" if where.n == 1 else "a third host (control)"
            print(f"{args.cycles} {args.event} cycles on {where.name} ({role}): "
                  f"{lost} of {sent} echoes lost", flush=True)
        print(re.sub(r"\s+", " ", lab.hv(1).appctl("version")).strip())
    finally:
        for p in load:
            p.kill()
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
