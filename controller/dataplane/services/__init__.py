"""The services that produce flows, in planning order; see `controller.dataplane.planner`.

Each module holds one service: the compiler calls for its owner kinds (`flows.compiler`), the
inputs it reads, and how a change of one of them maps to the units it plans again.  Adding a
service (a security group, a router, a subnet's DHCP) is adding a module and listing it here.
"""

from __future__ import annotations

from controller.dataplane.planner import Service
from controller.dataplane.services.base import BaseService
from controller.dataplane.services.l2 import L2Service
from controller.dataplane.services.routing import RoutingService
from controller.dataplane.services.security_groups import SecurityGroupService


def services() -> list[Service]:
    """Fresh instances (services cache what they last compiled), in planning order."""
    return [BaseService(), L2Service(), SecurityGroupService(), RoutingService()]
