"""Network services tenantnet answers itself (DHCP), as pure functions of the store's facts."""
