"""Emulated hypervisors and the tools around them, for the tests, the bench, the demo and the
Mininet topologies: ``hypervisors`` (Lab, Hypervisor, Vm), ``plans`` (the one registry of lab
address plans), ``cleanup`` (``python -m lab.cleanup``), ``proc`` and ``traffic`` helpers,
``tenantnet_proc`` (the controller as a child process and a small API client), ``pki``
(ovs-pki) and ``fake_switch`` (a misbehaving OpenFlow switch).

Test tooling, not installed with tenantnet: it is imported from the repository root (pytest,
``python -m``).  Standard library only, except ``fake_switch`` (os-ken): Mininet runs it under
Debian's python3, outside the venv.
"""
