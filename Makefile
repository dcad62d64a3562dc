# The two commands of the README: `make demo` and `make test`.  Both install what they need first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap bootstrap-test demo demo-tls demo-ha test unit lint bench bench-quick clean-hosts

bootstrap:
	@bash scripts/bootstrap.sh

# What the tests need on top: Debian's etcd-server (the store's etcd backend runs its tests on a
# 3-member cluster of it, started on loopback by the suite itself).
bootstrap-test:
	@bash scripts/bootstrap.sh --test

demo: bootstrap
	@$(PY) -m scripts.demo

# The same demo with TLS everywhere (PKI from ovs-pki, ssl: OpenFlow and OVSDB, HTTPS API).
demo-tls: bootstrap
	@$(PY) -m scripts.demo --tls

# 3 controllers on a 3-member etcd cluster (etcd-server: bootstrap-test), 3 hypervisors: kills the
# OpenFlow master of a host mid-ping and prints the failover time and the pings lost (docs/ha.md).
demo-ha: bootstrap-test
	@$(PY) -m scripts.demo_ha

test: bootstrap-test
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy controller flows
	@$(VENV)/bin/pytest -q --durations=25 tests

unit: bootstrap-test
	@$(VENV)/bin/pytest -q tests/unit

lint: bootstrap
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy controller flows

bench: bootstrap
	@$(PY) -m bench.run

bench-quick: bootstrap
	@$(PY) -m bench.run --quick

# Removes emulated hypervisors left by an interrupted run (only tenantnet's own tn- namespaces).
clean-hosts: bootstrap
	@$(PY) -m lab.cleanup
