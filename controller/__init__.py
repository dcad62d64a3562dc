"""tenantnet controller runtime: REST API, durable store, OpenFlow/OVSDB southbound."""
