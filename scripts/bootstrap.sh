#!/bin/bash
# Idempotent installer behind `make demo` and `make test`: Debian packages (Open vSwitch, OVN for
# the bench and its smoke test, Mininet, traffic tools) and a project venv in .venv.  Safe to run again: it only installs what is missing
# and reinstalls the venv only when setup.cfg/pyproject.toml change.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cd "$(dirname "$0")/.."

# OVN is always installed: `make test` runs the bench's smoke test, which runs OVN beside
# tenantnet (the packages start no daemon here; the bench starts its own).
APT_PACKAGES=(openvswitch-switch ovn-central ovn-host mininet iperf3 iputils-ping ethtool tcpdump
              iproute2 procps psmisc)

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
