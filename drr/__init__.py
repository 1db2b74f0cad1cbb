"""The rendering engine: X-ray physics, geometry and projectors, usable on its own."""

from drr.materials import density_from_hu

__all__ = ["density_from_hu"]
