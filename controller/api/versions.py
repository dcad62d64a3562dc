"""Discovery documents: API versions, the v2.0 resource list, and the extension list.

openstacksdk and openstackclient start with ``GET /`` (which version, at which URL) and ask
``/v2.0/extensions`` whether e.g. tags or revision ``If-Match`` are supported before using them,
so these must list exactly what tenantnet implements.
"""

from typing import Any

from fastapi import APIRouter

from controller.api.strict_json import StrictJsonRoute
from controller.store.errors import NotFound

UPDATED = "2024-01-01T00:00:00-00:00"

EXTENSIONS: list[tuple[str, str, str]] = [
    ("provider", "Provider Network", "Overlay type and segmentation id of a network."),
    ("binding", "Port Binding", "Host a port is bound to, and how it is plugged (OVS)."),
    ("port-security", "Port Security", "Anti-spoofing on/off per network and port."),
    ("security-group", "security-group", "The security groups extension."),
    (
        "stateful-security-group",
        "Stateful security group",
        "Security groups may be stateless (stateful=false).",
    ),
    ("allowed-address-pairs", "Allowed Address Pairs", "Extra IP/MAC a port may send from."),
    (
        "extra_dhcp_opt",
        "Neutron Extra DHCP options",
        "Extra DHCP options per port, added to or overriding what tenantnet's DHCP answers.",
    ),
    ("net-mtu", "Network MTU", "MTU of a network, derived from the underlay MTU."),
    ("standard-attr-revisions", "Resource revision numbers", "revision_number on resources."),
    ("revision-if-match", "If-Match constraints based on revision_number", "412 on mismatch."),
    ("standard-attr-timestamp", "Resource timestamps", "created_at and updated_at."),
    ("standard-attr-tag", "Tag support for resources", "tags and the /tags sub-resource."),
    ("standard-attr-description", "standard-attr-description", "description on resources."),
    ("project-id", "project_id field enabled", "project_id alongside tenant_id."),
    ("pagination", "Pagination support", "limit and marker on collections."),
    ("sorting", "Sorting support", "sort_key and sort_dir on collections."),
    ("filter-validation", "Filter parameters validation", "Unknown filters are refused."),
    ("external-net", "Neutron external network", "router:external (always false for now)."),
    (
        "network-ip-availability",
        "Network IP Availability",
        "Total and used IPs per network and subnet.",
    ),
    ("tag-creation", "Tag creation extension", "POST /<resources>/<id>/tags adds tags."),
    (
        "tag-ports-during-bulk-creation",
        "Tag Ports During Bulk Creation",
        "tags in (bulk) create bodies.",
    ),
    ("quotas", "Quota management support", "Per-project limits, enforced on every create."),
    ("quota_details", "Quota details management support", "Used, limit, reserved per project."),
    ("quota-check-limit", "Quota engine limit check", "check_limit accepted on quota updates."),
    (
        "quota-check-limit-default",
        "Quota engine limit check by default",
        "A limit below the usage is refused unless force.",
    ),
    ("router", "Neutron L3 Router", "Routers joining a project's subnets (east-west only)."),
    ("extraroute", "Neutron Extra Route", "Extra routes on routers (routes)."),
    (
        "extraroute-atomic",
        "Atomically add/remove extra routes",
        "PUT /routers/<id>/add_extraroutes and remove_extraroutes.",
    ),
    ("dvr", "Distributed Virtual Router", "Routers route on the sending hypervisor."),
    ("tenantnet-hosts", "Hypervisor hosts", "The /v2.0/hosts collection of tenantnet."),
]

COLLECTIONS = (
    ("network", "networks"),
    ("subnet", "subnets"),
    ("port", "ports"),
    ("host", "hosts"),
    ("security_group", "security-groups"),
    ("security_group_rule", "security-group-rules"),
    ("router", "routers"),
)


def _extension(alias: str, name: str, description: str) -> dict[str, Any]:
    return {
        "alias": alias,
        "name": name,
        "description": description,
        "updated": UPDATED,
        "links": [],
    }


def router(public_url: str = "") -> APIRouter:
    """The discovery routes; links start with ``public_url`` (relative links when empty).

    The links are never built from the request: the ``Host`` header is the client's to choose,
    and echoing it would let anyone who can reach the API point other clients elsewhere.
    keystoneauth (openstackclient, openstacksdk) resolves relative version links against the
    URL it asked.
    """
    api = APIRouter(route_class=StrictJsonRoute, tags=["discovery"])
    base = public_url.rstrip("/")

    @api.get("/", summary="API versions (no authentication)")
    def versions() -> dict[str, Any]:
        link = {"href": f"{base}/v2.0/", "rel": "self"}
        return {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [link]}]}

    @api.get("/v2.0/", summary="Resources of API v2.0")
    @api.get("/v2.0", include_in_schema=False)
    def resources() -> dict[str, Any]:
        return {
            "resources": [
                {
                    "name": singular,
                    "collection": plural,
                    "links": [{"href": f"{base}/v2.0/{plural}", "rel": "self"}],
                }
                for singular, plural in COLLECTIONS
            ]
        }

    @api.get("/v2.0/extensions", summary="Supported extensions")
    def extensions() -> dict[str, Any]:
        return {"extensions": [_extension(*e) for e in EXTENSIONS]}

    @api.get("/v2.0/extensions/{alias}", summary="One extension")
    def extension(alias: str) -> dict[str, Any]:
        for entry in EXTENSIONS:
            if entry[0] == alias:
                return {"extension": _extension(*entry)}
        raise NotFound(f"Extension with alias {alias} does not exist", "ExtensionNotFound")

    return api
