"""The live topology page (``GET /tenantnet/ui``) in Debian's headless chromium, driven by
Selenium through chromium-driver, against the demo's set-up on real switches: 3 hypervisors,
tenant-a (VXLAN) and tenant-b (GRE) with a VM on every host.  The page loads without a single
console error (an uncaught exception, a failed request, a blocked resource), shows every host
with its state and flow count, every network with its VNI and the hosts it spans, every port on
its host with its status, follows a change without a reload, and shows a hostile port name as
text."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.controller_env import start_registered
from tests.integration.dataplane_fixtures import wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TENANTS = [("tenant-a", "vxlan", 11), ("tenant-b", "gre", 21)]  # as scripts/demo.py
HOSTILE = '<img src="x" onerror="document.title=1">'

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason="needs Debian's chromium and chromium-driver (scripts/bootstrap.sh installs them)",
)


@pytest.fixture(scope="module")
def demo(make_module_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The demo's hosts, networks, ports and VMs, and the controller serving them."""
    lab = make_module_lab(3)
    ctl = start_registered(lab, tmp_path_factory.mktemp("tenantnet-ui"))
    try:
        api = ctl.api
        ports, nets = [], []
        for tenant, net_type, first_ip in TENANTS:
            net = api.create("network", name=f"{tenant}-net", project_id=tenant,
                             **{"provider:network_type": net_type})  # fmt: skip
            sub = api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4)
            nets.append(net)
            for i, hv in enumerate(lab.hvs):
                ip = f"10.0.0.{first_ip + i}"
                fixed = [{"subnet_id": sub["id"], "ip_address": ip}]
                port = api.create("port", network_id=net["id"], name=f"{tenant[-1]}{i + 1}",
                                  project_id=tenant, fixed_ips=fixed)  # fmt: skip
                lab.add_vm(hv, f"{tenant[-1]}{i + 1}", port["mac_address"], f"{ip}/24", port["id"])
                ports.append(port)
        api.wait_ports_active([p["id"] for p in ports])
        yield lab, ctl, nets, ports
    finally:
        ctl.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _cells(browser: Any, selector: str) -> list[str]:
    """The cells of the first row ``selector`` matches, read in one go inside the page (it
    redraws its tables at every refresh, which would make element handles stale)."""
    cells: list[str] = browser.execute_script(
        "const row = document.querySelector(arguments[0]);"
        "return row ? [...row.querySelectorAll('td')].map((td) => td.textContent) : [];",
        selector,
    )
    return cells


def test_the_page_shows_the_demo_live_without_console_errors(demo: Any, browser: Any) -> None:
    lab, ctl, nets, ports = demo
    api = ctl.api
    hostile = api.create("port", network_id=nets[0]["id"], name=HOSTILE)  # not bound anywhere
    browser.get(f"{api.base}/tenantnet/ui")
    status = api.status()["hosts"]

    def hosts_shown() -> bool:
        for hv in lab.hvs:
            cells = _cells(browser, f'#hosts tr[data-host="{hv.name}"]')
            if cells[:3] != [hv.name, "connected", hv.tunnel_ip]:
                return False
            if cells[3] != str(status[hv.name]["flows"]) or cells[5] != "2":
                return False
        return True

    wait_for(hosts_shown, 20, 0.2, "every host connected with its flow count and 2 ports")
    everywhere = ", ".join(hv.name for hv in lab.hvs)
    for net in nets:
        cells = _cells(browser, f'#networks tr[data-network="{net["id"]}"]')
        assert cells[:4] == [net["name"], net["provider:network_type"],
                             str(net["provider:segmentation_id"]), everywhere]  # fmt: skip
    for port in ports:
        host = api.show("port", port["id"])["binding:host_id"]
        cells = _cells(browser, f'[data-host-ports="{host}"] tr[data-port="{port["id"]}"]')
        assert cells[0] == port["name"] and cells[-1] == "ACTIVE", (port["name"], cells)
    cells = _cells(browser, f'[data-host-ports="(not bound)"] tr[data-port="{hostile["id"]}"]')
    assert cells[0] == HOSTILE and browser.title == "tenantnet topology"  # text, not markup

    # The page follows changes without a reload, one after the other.
    gone, renamed = ports[0], ports[1]
    api.delete("port", gone["id"])
    wait_for(lambda: not _cells(browser, f'tr[data-port="{gone["id"]}"]'), 10, 0.2,
             "the deleted port to leave the page")  # fmt: skip
    api.update("port", renamed["id"], name="renamed")
    wait_for(lambda: _cells(browser, f'tr[data-port="{renamed["id"]}"]')[:1] == ["renamed"],
             10, 0.2, "the new name on the page")  # fmt: skip
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
