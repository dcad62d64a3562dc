"""The one rule of which allowed address pairs are virtual IPs (flows/vip_pairs.py), as
the store (`claimable_vips`), the learner (`claimable`) and the mirror (`PortRec.vips`) apply it."""

from controller.dataplane.state import PortRec
from controller.dataplane.vips import claimable
from controller.store.ports import VIPS_HELD, claimable_vips
from flows.vip_pairs import vip_pairs

A, B, C = "fa:16:3e:00:00:0a", "fa:16:3e:00:00:0b", "fa:16:3e:00:00:0c"
PAIRS = [
    ("10.0.0.5", C),
    ("10.0.0.5/32", A),  # the same address written as a /32: the smallest MAC wins
    ("10.0.0.6/32", "FA:16:3E:00:00:0B"),
    ("10.0.0.0/24", A),  # a CIDR: not one address
    ("fd00::5", A),  # IPv6
    ("10.0.0.9", A),  # a fixed IP of the port
    ("not-an-address", A),  # skipped, not raised
]


def test_vip_pairs():
    assert vip_pairs(PAIRS, ["10.0.0.9"]) == {"10.0.0.5": A, "10.0.0.6": B}
    assert vip_pairs(reversed(PAIRS), ("10.0.0.9",)) == {"10.0.0.5": A, "10.0.0.6": B}
    assert vip_pairs([], ["10.0.0.9"]) == {}


def test_all_three_apply_it():
    store_pairs = [p for p in PAIRS if p[0] != "not-an-address"]  # the store refuses it
    body = {
        "id": "p1",
        "_num": 1,
        "network_id": "n1",
        "mac_address": B,
        "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.9"}],
        "allowed_address_pairs": [{"ip_address": a, "mac_address": m} for a, m in store_pairs],
        "binding:vif_details": {VIPS_HELD: ["10.0.0.5", "10.0.0.6", "10.0.0.9"]},
    }
    assert claimable_vips(body) == {"10.0.0.5", "10.0.0.6"}
    port = PortRec.from_store(body)
    assert port.vips == (("10.0.0.5", A), ("10.0.0.6", B))
    assert claimable(port) == {"10.0.0.5": A, "10.0.0.6": B}
