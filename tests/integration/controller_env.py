"""A `tenantnet serve` process with every hypervisor of a lab registered and connected."""

from __future__ import annotations

from pathlib import Path

from lab.hypervisors import Lab
from lab.tenantnet_proc import TenantnetProcess


def start_registered(
    lab: Lab, state_dir: Path, extra_args: tuple[str, ...] = ()
) -> TenantnetProcess:
    """Start the controller on the lab's management address and register each hypervisor
    over OVSDB TCP (``datapath_type=netdev``); returns once all of them are connected."""
    ctl = TenantnetProcess(
        state_dir, ofp_listen=f"{lab.mgmt_ip}:6653", extra_args=extra_args
    ).start()
    try:
        for hv in lab.hvs:
            ctl.api.create(
                "host", id=hv.name, tunnel_ip=hv.tunnel_ip, ovsdb=hv.ovsdb_tcp,
                datapath_type="netdev",
            )  # fmt: skip
        ctl.api.wait_hosts_connected([hv.name for hv in lab.hvs])
    except BaseException:
        ctl.stop()
        raise
    return ctl
