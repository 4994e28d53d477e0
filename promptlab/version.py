"""promptlab's version, recorded in every result (a module of its own: anything may import it)."""

__version__ = "0.1.0"
