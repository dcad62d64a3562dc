"""Pure compilation of tenant state into OpenFlow 1.3 rules (no I/O, no os-ken)."""
