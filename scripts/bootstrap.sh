#!/bin/bash
# Idempotent installer behind `make demo` and `make test`: Debian packages (Open vSwitch, OVN for
# the bench and its smoke test, Mininet, traffic tools) and a project venv in .venv.  Safe to run again: it only installs what is missing
# and reinstalls the venv only when setup.cfg/pyproject.toml change.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cd "$(dirname "$0")/.."

# OVN is always installed: `make test` runs the bench's smoke test, which runs OVN beside
# tenantnet (the packages start no daemon here; the bench starts its own).
# chromium + chromium-driver: the topology page's test (tests/integration/test_ui.py) drives
# Debian's headless chromium.
# busybox (udhcpc) + isc-dhcp-client (dhclient): real DHCP clients (tests/integration/test_dhcp_clients.py).
APT_PACKAGES=(openvswitch-switch ovn-central ovn-host mininet iperf3 iputils-ping ethtool tcpdump
              iproute2 procps psmisc chromium chromium-driver busybox isc-dhcp-client)
# --test (make test / make unit): etcd-server, for the etcd store backend's tests (the suite starts
# its own 3-member cluster on loopback; the package's own service is never started here), and
# traceroute, which the routing tests run across a router (tests/integration/test_routing.py).
if [ "${1:-}" = "--test" ]; then
  APT_PACKAGES+=(etcd-server traceroute)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get install -y -q python3-venv >/dev/null
  PY=/usr/bin/python3
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.tenantnet-installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: pip install -e .[test] (a few minutes on a fresh machine)"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

# python-ovs (ovsdbapp's OVSDB library) parses JSON in pure Python unless it has its C extension
# ovs._json, and PyPI's ovs comes without it (building it needs libopenvswitch).  Debian's
# python3-openvswitch, a dependency of openvswitch-switch, ships that extension; when it was built
# for the venv's Python (same ABI tag) it is linked into the venv's ovs package, and kept only
# if python-ovs then picks it up.  Reading a host's OVSDB costs ~4x less CPU with it, which is
# most of restart -> reconciled (README, Performance).  Without it everything works, slower.
.venv/bin/python - <<'PYEOF'
import importlib.machinery, pathlib, subprocess, sys
import ovs
suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
src = pathlib.Path("/usr/lib/python3/dist-packages/ovs") / f"_json{suffix}"
dst = pathlib.Path(ovs.__file__).parent / src.name
check = [sys.executable, "-c", "import ovs.json, sys; sys.exit(ovs.json.PARSER != 'C')"]
if subprocess.run(check).returncode == 0:
    sys.exit(0)
if not src.exists():
    print(f"bootstrap: no {src}: OVSDB JSON is parsed in pure Python (slower)")
    sys.exit(0)
dst.unlink(missing_ok=True)
dst.symlink_to(src)
if subprocess.run(check, stderr=subprocess.DEVNULL).returncode != 0:
    dst.unlink()
    print(f"bootstrap: {src} does not load here: OVSDB JSON is parsed in pure Python (slower)")
else:
    print(f"bootstrap: python-ovs uses the C JSON parser of python3-openvswitch ({src})")
PYEOF
