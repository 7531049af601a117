"""Redis on the wire: RESP commands, and the raw subscription connection jangteo's
subscribers (the realtime broker, the near-cache invalidation) are built on."""
