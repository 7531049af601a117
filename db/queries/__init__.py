"""SQL per area, as small async functions taking a connection."""
