"""xraymuscle: per-muscle volume and mass, with uncertainty, from a single hip radiograph."""

__version__ = "0.1.0"

from xraymuscle.errors import InputError

__all__ = ["InputError", "__version__"]
