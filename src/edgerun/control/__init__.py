"""The control plane: registry, bundle store, change feed and its HTTP API."""
