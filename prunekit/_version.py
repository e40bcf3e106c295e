"""prunekit's version, in a module of its own: what writes files names it, from any layer."""

__version__ = "0.1.0"
