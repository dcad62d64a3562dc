"""Request bodies the API accepts, as pydantic models.

These models check the JSON *shape* (which attributes exist, their JSON types) and are what
``/openapi.json`` publishes, so that a client generator or a fuzzer sees the real bodies.  Value
rules that need state or netaddr (MAC syntax, IP inside a subnet, segment ranges per type) are the
store's, so the data plane and the API refuse the same things with the same words.

Every model forbids unknown attributes: Neutron answers them with "Unrecognized attribute(s)".
Update models also accept the read-only attributes, because CloudStack PUTs whole objects back; the
store refuses them only when their value would change.
"""

from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, create_model

from controller.store.values import HOST_ID_PATTERN, MAX_LIST_ITEMS

UINT32_MAX = 2**32 - 1
MAX_ITEMS = MAX_LIST_ITEMS  # list attributes are bounded like the store's free-form lists
MAX_BULK = 1000
"""Objects per bulk create.  A bulk is one write transaction: 3,000 networks held the store's
write lock for 9 s, stalling every other request.  The bench sends 1,000 ports per request."""
# Published in the schema only (the store checks and words the refusal):
UUID_DOC: dict[str, Any] = {"format": "uuid"}
HOST_ID_DOC: dict[str, Any] = {"pattern": HOST_ID_PATTERN}


NULL_MEANS_DEFAULT = frozenset(
    {
        "id",
        "status",
        "project_id",
        "tenant_id",
        "mtu",
        "provider:network_type",
        "provider:segmentation_id",
        "provider:physical_network",
        "gateway_ip",
        "ipv6_ra_mode",
        "ipv6_address_mode",
        "subnetpool_id",
        "segment_id",
        "mac_address",
        "fixed_ips",
        "binding:host_id",
        "ovsdb",
        "datapath_id",
        "security_groups",
        "protocol",
        "port_range_min",
        "port_range_max",
        "remote_ip_prefix",
        "remote_group_id",
        "remote_address_group_id",
        "external_gateway_info",
    }
)
"""Attributes for which an explicit ``null`` means something (the default, "none", "allocate
one"); for every other optional attribute ``null`` is refused, and the published schema says so
(the models accept it only so that the store words the refusal)."""


def _publish_nulls_honestly(schema: dict[str, Any]) -> None:
    for name, prop in schema.get("properties", {}).items():
        options = prop.get("anyOf")
        if name in NULL_MEANS_DEFAULT or not options or {"type": "null"} not in options:
            continue
        rest = [o for o in options if o != {"type": "null"}]
        prop.pop("anyOf")
        prop.update(rest[0] if len(rest) == 1 else {"anyOf": rest})


class Body(BaseModel):
    """Base: unknown attributes are an error, aliases (``provider:...``) are the JSON names."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=False, json_schema_extra=_publish_nulls_honestly
    )


class StandardAttrs(Body):
    """Attributes every Neutron resource has."""

    name: str | None = Field(None, max_length=255)
    description: str | None = Field(None, max_length=255)
    project_id: str | None = Field(None, max_length=255)
    tenant_id: str | None = Field(None, max_length=255)
    tags: list[str] | None = Field(None, max_length=MAX_ITEMS)


class ReadOnlyEcho(Body):
    """Read-only attributes an update may repeat unchanged."""

    created_at: str | None = None
    updated_at: str | None = None
    revision_number: int | None = None


# -- networks ------------------------------------------------------------------------------------


class NetworkFields(StandardAttrs):
    """A network's client-settable attributes."""

    id: str | None = Field(None, json_schema_extra=UUID_DOC)
    admin_state_up: bool | None = None
    shared: bool | None = None
    status: str | None = Field(None, description="Accepted and ignored: always ACTIVE.")
    mtu: int | None = Field(None, ge=68, le=65535)
    port_security_enabled: bool | None = None
    router_external: bool | None = Field(None, alias="router:external")
    availability_zone_hints: list[str] | None = Field(None, max_length=MAX_ITEMS)
    provider_network_type: Literal["vxlan", "gre"] | None = Field(
        None, alias="provider:network_type"
    )
    provider_segmentation_id: int | None = Field(
        None,
        alias="provider:segmentation_id",
        ge=1,
        le=UINT32_MAX,
        description="VXLAN 1..16777215, GRE 1..4294967295; allocated when absent.",
    )
    provider_physical_network: None = Field(None, alias="provider:physical_network")


class NetworkCreate(NetworkFields):
    """Body of one network in a create request."""


class NetworkUpdate(NetworkFields, ReadOnlyEcho):
    """Body of a network update."""

    subnets: list[str] | None = Field(None, max_length=MAX_ITEMS)
    availability_zones: list[str] | None = Field(None, max_length=MAX_ITEMS)


# -- subnets -------------------------------------------------------------------------------------


class AllocationPool(Body):
    """An inclusive range of addresses ports are given addresses from."""

    start: str
    end: str


class HostRoute(Body):
    """A route handed to instances by DHCP."""

    destination: str
    nexthop: str


class SubnetFields(StandardAttrs):
    """A subnet's client-settable attributes."""

    id: str | None = Field(None, json_schema_extra=UUID_DOC)
    network_id: str | None = None
    cidr: str | None = None
    ip_version: Literal[4, 6] | None = None
    gateway_ip: str | None = Field(None, description="Default: the first host; null: none.")
    allocation_pools: list[AllocationPool] | None = Field(None, max_length=MAX_ITEMS)
    dns_nameservers: list[str] | None = Field(None, max_length=MAX_ITEMS)
    host_routes: list[HostRoute] | None = Field(None, max_length=MAX_ITEMS)
    enable_dhcp: bool | None = None
    ipv6_ra_mode: None = None
    ipv6_address_mode: None = None
    subnetpool_id: None = None
    segment_id: None = None
    service_types: list[str] | None = Field(None, max_length=MAX_ITEMS)


class SubnetCreate(SubnetFields):
    """Body of one subnet in a create request."""

    network_id: str
    cidr: str


class SubnetUpdate(SubnetFields, ReadOnlyEcho):
    """Body of a subnet update."""


# -- ports ---------------------------------------------------------------------------------------


class FixedIp(Body):
    """A requested address: a subnet to allocate from, an explicit IP, or both."""

    subnet_id: str | None = None
    ip_address: str | None = None


class AddressPair(Body):
    """An extra source (IP or CIDR, optional MAC) the port may use."""

    ip_address: str
    mac_address: str | None = None


class ExtraDhcpOpt(Body):
    """A DHCP option for this port (Neutron's ``extra_dhcp_opt``): a name (``mtu``,
    ``domain-search``...) or an option number, its value (null: remove it on update) and the
    IP version it is for."""

    opt_name: str = Field(min_length=1, max_length=64)
    opt_value: str | None = Field(max_length=255)
    ip_version: Literal[4, 6, "4", "6"] | None = None


class PortFields(StandardAttrs):
    """A port's client-settable attributes."""

    id: str | None = Field(None, json_schema_extra=UUID_DOC)
    network_id: str | None = None
    mac_address: str | None = None
    fixed_ips: list[FixedIp] | None = Field(None, max_length=MAX_ITEMS)
    device_id: str | None = Field(None, max_length=255)
    device_owner: str | None = Field(None, max_length=255)
    admin_state_up: bool | None = None
    status: str | None = Field(None, description="Accepted and ignored: set by the data plane.")
    port_security_enabled: bool | None = None
    security_groups: list[str] | None = Field(None, max_length=MAX_ITEMS)
    allowed_address_pairs: list[AddressPair] | None = Field(None, max_length=MAX_ITEMS)
    extra_dhcp_opts: list[ExtraDhcpOpt] | None = Field(None, max_length=MAX_ITEMS)
    binding_host_id: str | None = Field(
        None, alias="binding:host_id", max_length=255, json_schema_extra=HOST_ID_DOC
    )
    binding_profile: dict[str, Any] | None = Field(None, alias="binding:profile")
    binding_vnic_type: Literal["normal"] | None = Field(None, alias="binding:vnic_type")


class PortCreate(PortFields):
    """Body of one port in a create request."""

    network_id: str


class PortUpdate(PortFields, ReadOnlyEcho):
    """Body of a port update."""

    binding_vif_type: str | None = Field(None, alias="binding:vif_type")
    binding_vif_details: dict[str, Any] | None = Field(None, alias="binding:vif_details")


class CompatPortCreate(PortCreate):
    """CloudStack's OpenDaylight plugin sends ``fixed_ips`` as a list of plain addresses."""

    fixed_ips: list[FixedIp | str] | None = Field(None, max_length=MAX_ITEMS)  # type: ignore[assignment]


class CompatPortUpdate(PortUpdate):
    """See `CompatPortCreate`."""

    fixed_ips: list[FixedIp | str] | None = Field(None, max_length=MAX_ITEMS)  # type: ignore[assignment]


# -- hosts ---------------------------------------------------------------------------------------


class HostFields(Body):
    """A hypervisor as the orchestrator describes it."""

    name: str | None = Field(None, max_length=255)
    description: str | None = Field(None, max_length=255)
    tunnel_ip: str | None = Field(None, description="IPv4 address terminating the overlay.")
    ovsdb: str | None = Field(
        None, description="tcp:IP:PORT, ssl:IP:PORT or unix:/PATH; default tcp:<tunnel_ip>:6640."
    )
    mgmt_ip: str | None = Field(
        None,
        description="Address the host's switch connects from (checked without TLS); default: "
        "the IP of its OVSDB target.",
    )
    integration_bridge: str | None = Field(None, max_length=15)
    datapath_type: Literal["system", "netdev"] | None = None
    status: str | None = Field(None, description="Accepted and ignored: set by the data plane.")
    datapath_id: str | None = Field(None, description="Accepted and ignored.")


class HostCreate(HostFields):
    """Body of one host in a create request (``id`` is the orchestrator's host name)."""

    id: str = Field(min_length=1, max_length=255, json_schema_extra=HOST_ID_DOC)
    tunnel_ip: str


class HostUpdate(HostFields, ReadOnlyEcho):
    """Body of a host update."""

    id: str | None = None


# -- security groups -------------------------------------------------------------------------


class SecurityGroupFields(StandardAttrs):
    """A security group's client-settable attributes."""

    id: str | None = Field(None, json_schema_extra=UUID_DOC)
    stateful: bool | None = Field(None, description="Default true; false: no conntrack.")


class SecurityGroupCreate(SecurityGroupFields):
    """Body of one security group in a create request (``default`` is not a valid name)."""


class SecurityGroupUpdate(SecurityGroupFields, ReadOnlyEcho):
    """Body of a security group update."""

    security_group_rules: list[dict[str, Any]] | None = Field(None, max_length=MAX_ITEMS)
    shared: bool | None = None


class SecurityGroupRuleCreate(Body):
    """Body of one security group rule in a create request (rules cannot be updated)."""

    id: str | None = Field(None, json_schema_extra=UUID_DOC)
    description: str | None = Field(None, max_length=255)
    project_id: str | None = Field(None, max_length=255)
    tenant_id: str | None = Field(None, max_length=255)
    security_group_id: str = Field(json_schema_extra=UUID_DOC)
    direction: Literal["ingress", "egress"]
    ethertype: str | None = Field(None, description="IPv4 (default) or IPv6, any case.")
    protocol: str | StrictInt | None = Field(
        None, description="null or 'any': any; a name (tcp, udp, icmp, ...) or 0-255."
    )
    port_range_min: StrictInt | str | None = Field(
        None, description="First port (tcp, udp, sctp, udplite, dccp) or the ICMP type."
    )
    port_range_max: StrictInt | str | None = Field(
        None, description="Last port (tcp, udp, sctp, udplite, dccp) or the ICMP code."
    )
    remote_ip_prefix: str | None = Field(None, description="Address or CIDR of the peer.")
    remote_group_id: str | None = Field(
        None, description="Peers are the members of this group.", json_schema_extra=UUID_DOC
    )
    remote_address_group_id: None = None


# -- routers -----------------------------------------------------------------------------------


class RouterFields(StandardAttrs):
    """A router's client-settable attributes."""

    id: str | None = Field(None, json_schema_extra=UUID_DOC)
    admin_state_up: bool | None = None
    distributed: bool | None = Field(None, description="Always true (the only accepted value).")
    ha: bool | None = Field(None, description="Always false (the only accepted value).")
    external_gateway_info: dict[str, Any] | None = Field(
        None, description="Null only: tenantnet routes east-west, north-south is not supported."
    )


class RouterCreate(RouterFields):
    """Body of one router in a create request (routes are set by update)."""


class RouterUpdate(RouterFields, ReadOnlyEcho):
    """Body of a router update; ``routes`` replaces the extra routes as a whole."""

    status: str | None = None
    routes: list[HostRoute] | None = Field(None, max_length=MAX_ITEMS)


ID_TEXT_DOC: dict[str, Any] = {"type": "string", "format": "uuid"}


class RouterInterface(Body):
    """``PUT /routers/<id>/add_router_interface`` (or ``remove_``): one of the two.

    The body is not wrapped in ``router`` (Neutron's shape), so a wrong value type is worded by
    the store, which names the attribute (this model's errors would be taken for the
    envelope's); the schema still publishes strings."""

    subnet_id: Any = Field(None, json_schema_extra=ID_TEXT_DOC)
    port_id: Any = Field(None, json_schema_extra=ID_TEXT_DOC)


class ExtraRoutes(Body):
    """The ``router`` of ``add_extraroutes`` / ``remove_extraroutes``."""

    routes: list[HostRoute] = Field(max_length=MAX_ITEMS)


class ExtraRoutesRequest(Body):
    """``{"router": {"routes": [...]}}``."""

    router: ExtraRoutes


# -- envelopes -----------------------------------------------------------------------------------


class TagsBody(Body):
    """``PUT /<collection>/<id>/tags``: the complete new tag list."""

    tags: list[str]


@cache
def create_envelope(singular: str, plural: str, item: type[Body]) -> type[Body]:
    """``{"network": {...}}`` or, for bulk create, ``{"networks": [{...}, ...]}``."""
    fields: dict[str, Any] = {
        singular: (item | None, None),
        plural: (list[item] | None, Field(None, min_length=1, max_length=MAX_BULK)),  # type: ignore[valid-type]
    }
    model: type[Body] = create_model(
        f"{item.__name__}Request",
        __base__=Body,
        **fields,
    )
    # Exactly one of the two keys (the endpoint refuses both or neither).
    model.model_config["json_schema_extra"] = _one_of_two
    model.model_rebuild(force=True)
    return model


def _one_of_two(schema: dict[str, Any]) -> None:
    _publish_nulls_honestly(schema)
    schema["minProperties"] = 1
    schema["maxProperties"] = 1


@cache
def update_envelope(singular: str, item: type[Body]) -> type[Body]:
    """``{"network": {...}}`` with the attributes to change."""
    fields: dict[str, Any] = {singular: (item, ...)}
    model: type[Body] = create_model(f"{item.__name__}Request", __base__=Body, **fields)
    return model


# -- quotas --------------------------------------------------------------------------------------


def _not_a_bool(value: Any) -> Any:
    """JSON ``true`` is no quota (pydantic would take it for 1)."""
    if isinstance(value, bool):
        raise ValueError(f"'{value}' is not an integer")
    return value


QuotaLimit = Annotated[
    int,
    BeforeValidator(_not_a_bool),
    Field(ge=-1, le=2**31 - 1, description="Limit; -1: unlimited."),
]


@cache
def quota_update_envelope(resources: tuple[str, ...]) -> type[Body]:
    """``{"quota": {"network": 10, ...}}``: the registered quota resources, plus Neutron's
    ``force`` (set a limit below the current usage) and ``check_limit`` (the default since
    Neutron 2025.1, accepted for older clients such as openstackclient)."""
    fields: dict[str, Any] = {name: (QuotaLimit, None) for name in resources}
    fields["force"] = (bool | None, None)
    fields["check_limit"] = (bool | None, None)
    item: type[Body] = create_model("QuotaUpdate", __base__=Body, **fields)
    envelope: type[Body] = create_model("QuotaUpdateRequest", __base__=Body, quota=(item, ...))
    return envelope
