"""What the API returns, as pydantic models used for documentation and for the attribute lists.

Responses are built from the store's dicts directly (no re-validation on the way out); these
models describe them in ``/openapi.json`` and name the attributes a collection can be filtered
and projected on, so the published schema and the accepted filters cannot drift apart.
"""

from functools import cache
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model


class View(BaseModel):
    """Base of the response models (extra keys allowed: they document, not constrain)."""

    model_config = ConfigDict(extra="allow")


class StandardView(View):
    id: str
    name: str
    description: str
    project_id: str
    tenant_id: str
    tags: list[str]
    created_at: str
    updated_at: str
    revision_number: int


class NetworkView(StandardView):
    admin_state_up: bool
    status: str
    shared: bool
    mtu: int
    port_security_enabled: bool
    subnets: list[str]
    availability_zone_hints: list[str]
    availability_zones: list[str]
    router_external: bool = Field(alias="router:external")
    provider_network_type: str = Field(alias="provider:network_type")
    provider_segmentation_id: int = Field(alias="provider:segmentation_id")
    provider_physical_network: str | None = Field(alias="provider:physical_network")


class PoolView(View):
    start: str
    end: str


class RouteView(View):
    destination: str
    nexthop: str


class SubnetView(StandardView):
    network_id: str
    cidr: str
    ip_version: int
    gateway_ip: str | None
    allocation_pools: list[PoolView]
    dns_nameservers: list[str]
    host_routes: list[RouteView]
    enable_dhcp: bool
    ipv6_ra_mode: str | None
    ipv6_address_mode: str | None
    subnetpool_id: str | None
    segment_id: str | None
    service_types: list[str]


class FixedIpView(View):
    subnet_id: str
    ip_address: str


class AddressPairView(View):
    ip_address: str
    mac_address: str


class ExtraDhcpOptView(View):
    opt_name: str
    opt_value: str
    ip_version: int


class PortView(StandardView):
    network_id: str
    mac_address: str
    fixed_ips: list[FixedIpView]
    device_id: str
    device_owner: str
    admin_state_up: bool
    status: str
    port_security_enabled: bool
    security_groups: list[str]
    allowed_address_pairs: list[AddressPairView]
    extra_dhcp_opts: list[ExtraDhcpOptView]
    binding_host_id: str = Field(alias="binding:host_id")
    binding_profile: dict[str, Any] = Field(alias="binding:profile")
    binding_vif_type: str = Field(alias="binding:vif_type")
    binding_vif_details: dict[str, Any] = Field(alias="binding:vif_details")
    binding_vnic_type: str = Field(alias="binding:vnic_type")


class SecurityGroupRuleView(View):
    id: str
    project_id: str
    tenant_id: str
    description: str
    created_at: str
    updated_at: str
    revision_number: int
    security_group_id: str
    direction: str
    ethertype: str
    protocol: str | None
    port_range_min: int | None
    port_range_max: int | None
    remote_ip_prefix: str | None
    normalized_cidr: str | None
    remote_group_id: str | None
    remote_address_group_id: str | None
    belongs_to_default_sg: bool


class SecurityGroupView(StandardView):
    stateful: bool
    shared: bool
    security_group_rules: list[SecurityGroupRuleView]


class RouterView(StandardView):
    admin_state_up: bool
    status: str
    distributed: bool
    ha: bool
    routes: list[RouteView]
    external_gateway_info: dict[str, Any] | None


class RouterInterfaceView(View):
    """The answer of add/remove_router_interface (Neutron's, not wrapped in ``router``)."""

    id: str
    tenant_id: str
    project_id: str
    port_id: str
    network_id: str
    subnet_id: str
    subnet_ids: list[str]


class HostView(View):
    id: str
    name: str
    description: str
    tunnel_ip: str
    ovsdb: str
    mgmt_ip: str = ""
    integration_bridge: str
    datapath_type: str
    status: str
    datapath_id: str | None
    created_at: str
    updated_at: str
    revision_number: int


class Link(View):
    rel: str
    href: str


class NeutronErrorDetail(View):
    type: str
    message: str
    detail: str


class NeutronErrorBody(View):
    """Every error: ``{"NeutronError": {"type", "message", "detail"}}``."""

    NeutronError: NeutronErrorDetail


class TagsView(View):
    tags: list[str]


def attribute_names(view: type[View]) -> frozenset[str]:
    """The JSON attribute names of a view (aliases where given)."""
    return frozenset(f.alias or name for name, f in view.model_fields.items())


@cache
def scalar_types(view: type[View]) -> dict[str, type]:
    """``bool`` or ``int`` per attribute of a view that holds one (or null): what a list filter
    on it must spell, whatever the stored objects hold."""
    out: dict[str, type] = {}
    for name, f in view.model_fields.items():
        args = set(get_args(f.annotation)) - {type(None)} or {f.annotation}
        if args in ({bool}, {int}):
            out[f.alias or name] = args.pop()
    return out


@cache
def show_envelope(singular: str, view: type[View]) -> type[View]:
    """``{"network": {...}}``."""
    fields: dict[str, Any] = {singular: (view, ...)}
    model: type[View] = create_model(f"{view.__name__}Show", __base__=View, **fields)
    return model


@cache
def list_envelope(plural: str, view: type[View]) -> type[View]:
    """``{"networks": [...], "networks_links": [...]}`` (links only when more remain)."""
    fields: dict[str, Any] = {
        plural: (list[view], ...),  # type: ignore[valid-type]
        f"{plural}_links": (list[Link] | None, None),
    }
    model: type[View] = create_model(f"{view.__name__}List", __base__=View, **fields)
    return model


class QuotaView(View):
    """``{"network": 100, "subnet": 100, "port": 500, ..., "project_id": ...}``: one integer
    per quota resource (-1: unlimited)."""

    project_id: str | None = None


class QuotaShow(View):
    quota: QuotaView


class QuotaList(View):
    quotas: list[QuotaView]


class QuotaUsage(View):
    used: int
    limit: int
    reserved: int


class QuotaDetailsShow(View):
    """``{"quota": {"network": {"used", "limit", "reserved"}, ...}}``."""

    quota: dict[str, QuotaUsage]


class SubnetIpAvailability(View):
    subnet_id: str
    subnet_name: str
    cidr: str
    ip_version: int
    total_ips: int
    used_ips: int


class IpAvailabilityView(View):
    network_id: str
    network_name: str
    project_id: str
    tenant_id: str
    subnet_ip_availability: list[SubnetIpAvailability]
    total_ips: int
    used_ips: int


class IpAvailabilityShow(View):
    network_ip_availability: IpAvailabilityView


class IpAvailabilityList(View):
    network_ip_availabilities: list[IpAvailabilityView]
