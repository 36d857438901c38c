"""edgerun: run user functions at the edge, forward the rest to regions."""

__version__ = "0.1.0"
