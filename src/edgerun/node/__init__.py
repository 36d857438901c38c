"""A region or POP node: frontend, registry follower, bundle cache, forwarding."""
