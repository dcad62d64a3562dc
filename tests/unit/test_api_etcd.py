"""The API's write paths again, on a store on the suite's 3-member etcd cluster.

Every resource's create, update and delete (bulk, If-Match, tags, CloudStack's replays),
quotas, refusals and concurrent writers, through the same API tests as on SQLite: the imported
tests run here with `test_store_etcd`'s ``store`` fixture (an `EtcdStore` on a key prefix of
the test's own), under which conftest's ``client`` builds the app.  The read-only and
HTTP-layer tests (discovery, docs, body limits, auth) do not touch the store's backend and run
on SQLite only: they would cost suite time and prove nothing more.
"""

from __future__ import annotations

import pytest

from tests.unit.test_api import (  # noqa: F401  (collected again, on etcd)
    test_a_host_whose_datapath_id_is_taken_is_a_409,
    test_api_writes_publish_events,
    test_bulk_create,
    test_bulk_create_is_atomic,
    test_cloudstack_network_put_keeps_the_segment,
    test_cloudstack_resent_network_create_is_idempotent_too,
    test_cloudstack_resent_port_create_answers_the_existing_port,
    test_concurrent_tag_adds_lose_nothing,
    test_delete_rules,
    test_filters,
    test_gre_network_and_segmentation_id_rules,
    test_hosts_api,
    test_if_match_revision,
    test_network_create_defaults_and_shape,
    test_network_subnets_list_follows_subnets,
    test_pagination,
    test_port_create_defaults,
    test_port_ip_rules,
    test_port_mac_rules,
    test_port_on_missing_network,
    test_port_update_and_read_only,
    test_subnet_defaults,
    test_subnet_on_missing_network,
    test_tag_creation_adds_tags,
)
from tests.unit.test_quotas import (  # noqa: F401  (collected again, on etcd)
    test_a_limit_below_the_usage_needs_force,
    test_a_project_limit_wins_and_minus_one_is_unlimited,
    test_check_limit_and_force,
    test_delete_goes_back_to_the_defaults,
    test_over_quota_is_neutrons_409,
)
from tests.unit.test_routers_api import (  # noqa: F401  (collected again, on etcd)
    test_add_and_remove_extraroutes_atomically,
    test_add_by_subnet_makes_a_port_at_the_gateway,
    test_interface_refusals_by_subnet,
    test_remove_interface_by_subnet_or_port,
)
from tests.unit.test_security_groups_api import (  # noqa: F401  (collected again, on etcd)
    test_a_group_in_use_cannot_be_deleted_or_change_statefulness,
    test_bulk_group_create_is_atomic,
    test_deleting_a_group_deletes_the_rules_that_name_it,
    test_group_show_update_delete_and_revision,
    test_rules_change_their_groups_revision_and_publish_both,
    test_the_same_rule_twice_is_a_409,
)
from tests.unit.test_store_etcd import store  # noqa: F401  (the fixture: an EtcdStore)

pytestmark = pytest.mark.etcd
