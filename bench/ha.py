"""Issue 18's scenario: clustered control planes side by side (``--only ha-h3``).

tenantnet: the same work first on one instance with its SQLite store, then on 3 instances on a
3-member etcd cluster (`bench.sut_ha.EtcdTenantnetSystem`); OVN: NB and SB clustered (OVSDB
Raft, 3 members each) with an active and a standby ovn-northd (`OvnClusteredSystem`).  On
each (fresh lab, H hosts):

* latency: ``lat`` new ports one after the other, VM pre-plugged (`bench.scenario.latency`:
  create -> ready, first ping, the POST alone for tenantnet);
* bulk: ``P`` pre-plugged ports at once (`bench.scenario.bulk`);
* after both systems' runs, the latency again with both clustered systems up, creates
  alternated between them (`alternated_latency`, ``lat_alternated`` ports each);
* on the clustered systems only, two failovers while vm1 (hv1) pings vm2 (hv2) every 10 ms:
  ``control``: kill -9 of what computes hv1's state (tenantnet: the instance owning hv1; OVN:
  the active ovn-northd), ``store``: kill -9 of the store's Raft leader (etcd's; OVN: the NB
  and the SB leaders).  Right after the kill a port is created for a VM already plugged on
  hv1 (through a surviving instance); measured from the kill: until the system reports itself
  recovered (`recovered_s`: a survivor owns, has read and reconciled the moved hosts / the
  standby northd is active; a new leader), until that port is ready (`port_ready_s`), and
  the pings lost.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from bench.common import HA_TN_LAB, log
from bench.scenario import (
    _Ping,
    bulk,
    fresh_system,
    latency,
    latency_record,
    one_port_latency,
    plug_latency_vms,
    setup_base,
)
from bench.sut_ha import EtcdTenantnetSystem
from bench.sut_tenantnet import TenantnetSystem
from lab.hypervisors import Vm

# VMs plugged on hv1 whose ports are created right after each kill (network 0)
FAILOVER_VMS = {"control": ("fo1", "0a:00:00:02:00:01", "10.100.253.1"),
                "store": ("fo2", "0a:00:00:02:00:02", "10.100.253.2")}


def _api_and_bulk(system: Any, sc: dict[str, Any], m: dict[str, Any]) -> list[Vm]:
    vms = setup_base(system, sc["N"])
    m["lat"] = latency(system, vms, sc["lat"], f"{sc['name']} {system.name} latency")
    if sc.get("latency_only"):  # --ha-latency-only
        return vms
    m["bulk"] = bulk(system, sc["P"], sc["N"])
    vms[0].wait_reachable(vms[1].ip, timeout=20)
    return vms


def _wait_recovered(recovered: Any, t0: float, out: dict[str, Any], timeout: float) -> None:
    """Poll ``recovered()`` every 20 ms; ``out["recovered_s"]``: seconds from ``t0`` until it
    held (None if it never did).  A check that fails (a survivor not answering yet) is False."""
    out["recovered_s"] = None
    while time.monotonic() - t0 < timeout:
        try:
            if recovered():
                out["recovered_s"] = round(time.monotonic() - t0, 3)
                return
        except Exception:  # not recovered yet, whatever the reason
            pass
        time.sleep(0.02)


def failover(system: Any, vms: list[Vm], kind: str, vm: Vm, timeout: float = 60
             ) -> dict[str, Any]:
    """kill -9 (``kind`` "control" or "store") while vm1 pings vm2; see the module doc."""
    ping = _Ping(vms[0].ns, vms[1].ip)
    time.sleep(1.0)
    t0 = time.monotonic()
    if kind == "control":
        info, recovered = system.kill_control(vms[0].hv.name)
    else:
        info, recovered = system.kill_store_leader()
    rec: dict[str, Any] = {}
    poller = threading.Thread(target=_wait_recovered, args=(recovered, t0, rec, timeout),
                              daemon=True)
    poller.start()
    out: dict[str, Any] = {**info}
    try:
        system.create_ports_wait([(0, vm.name, vm.mac, vm.ip)], timeout=timeout)
        out["port_ready_s"] = round(time.monotonic() - t0, 3)
        api_s = getattr(system, "last_api_s", None)  # tenantnet: the POST alone
        out["api_s"] = round(api_s, 3) if api_s is not None else None
    except Exception as exc:  # recorded: the row shows n/a, the JSON why
        out["port_ready_s"], out["error"] = None, repr(exc)
    poller.join(timeout + 5)
    time.sleep(0.5)
    out.update(rec, **ping.stop())
    log(f"{system.name} failover ({kind}): {out}")
    return out


def alternated_latency(systems: dict[str, Any], sc: dict[str, Any],
                       measure: Any = one_port_latency) -> dict[str, dict[str, Any]]:
    """The latency with every clustered system up at once (``systems``: name -> a system not
    started yet, each on a fresh lab of its own): ``lat_alternated`` ports per system, one
    port per system per round and the system that goes first alternating round by round
    (ABBA).  Measured one system after the other, OVN clustered's median moved from 25.5 to
    35.4 ms between two runs minutes apart (2026-12-03), more than the ratio's margin:
    alternated, each pair of creates meets the same moment of the machine.  A system that
    fails gets ``error`` (the others' figures stand)."""
    n = sc["lat_alternated"]
    out: dict[str, dict[str, Any]] = {name: latency_record() for name in systems}
    with contextlib.ExitStack() as stack:
        plugged: dict[str, tuple[Any, Vm, list[Vm]]] = {}
        for name, system in systems.items():
            try:
                stack.enter_context(fresh_system(system, sc))
                vms = setup_base(system, sc["N"])
                plugged[name] = (system, vms[0], plug_latency_vms(system, vms, n))
            except Exception as exc:
                out[name]["error"] = repr(exc)
        names = list(plugged)
        for r in range(n):
            for name in names if r % 2 == 0 else names[::-1]:
                system, vm1, lat = plugged[name]
                if "error" in out[name]:
                    continue
                try:
                    measure(system, vm1, lat[r], out[name])
                except Exception as exc:
                    out[name]["error"] = repr(exc)
    for name, res in out.items():
        log(f"{name} port create -> ready, alternated: {res['ready_ms']} ms "
            f"{res.get('error', '')}")
    return out


def run_ha(system: Any, sc: dict[str, Any]) -> dict[str, Any]:
    """One run: for tenantnet on etcd, first the same latency and bulk on one SQLite instance
    (``m["sqlite"]``); then the clustered system: latency, bulk and both failovers (with
    ``latency_only``, from ``--ha-latency-only``: the latency alone, on each system)."""
    sqlite: dict[str, Any] | None = None
    if isinstance(system, EtcdTenantnetSystem):
        single = TenantnetSystem(sc["H"], bulk_chunk=system.bulk_chunk, lab_kwargs=HA_TN_LAB)
        with fresh_system(single, sc) as sqlite:
            _api_and_bulk(single, sc, sqlite)
    with fresh_system(system, sc) as m:
        if sc.get("latency_only"):  # --ha-latency-only: the port-ready rows alone
            _api_and_bulk(system, sc, m)
        else:
            fo = {kind: system.lab.add_vm(1, name, mac, f"{ip}/16", system.iface_id(name))
                  for kind, (name, mac, ip) in FAILOVER_VMS.items()}
            vms = _api_and_bulk(system, sc, m)
            for kind in ("control", "store"):
                m[f"failover_{kind}"] = failover(system, vms, kind, fo[kind])
    if sqlite is not None:
        m["sqlite"] = sqlite
    return m
