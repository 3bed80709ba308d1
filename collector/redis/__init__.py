"""Redis mode, the one package that imports `redis`: store, outbox, delivery log, campaign sync."""
