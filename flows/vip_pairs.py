"""Which of a port's allowed address pairs are virtual IPs: the one rule the flow compiler, the
store and the data plane all apply (`flows.compiler`'s announce rules,
`controller.store.ports.claimable_vips`, `controller.dataplane.vips.claimable`,
`controller.dataplane.state.PortRec.vips`), so the switch copies to the controller exactly the
announcements the learner accepts.  Pure, netaddr only: it lives in `flows` so the compiler can
use it, and the store and the data plane may import it without importing each other's side."""

from __future__ import annotations

from collections.abc import Iterable

import netaddr


def vip_pairs(pairs: Iterable[tuple[str, str]], fixed_ips: Iterable[str]) -> dict[str, str]:
    """``{virtual IP: MAC}`` of a port: its single-IPv4 allowed address pairs (``a.b.c.d`` or
    ``a.b.c.d/32``) that are not one of its fixed IPs (those are routed anyway), each with the
    pair's MAC in lower case; of several pairs of one address, the smallest MAC (the one its
    route takes and its announcements must come from).  ``pairs`` are (address, MAC); an
    address that does not parse is skipped (a record need not have come from the store)."""
    fixed = set(fixed_ips)
    out: dict[str, str] = {}
    for addr, mac in pairs:
        try:
            net = netaddr.IPNetwork(addr)
        except (ValueError, TypeError, netaddr.AddrFormatError):
            continue
        ip = str(net.ip)
        if net.version != 4 or net.prefixlen != 32 or ip in fixed:
            continue
        mac = mac.lower()
        if ip not in out or mac < out[ip]:
            out[ip] = mac
    return out
