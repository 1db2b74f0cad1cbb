"""The renderer: a preset (geometry, pose ranges, physics) applied to a scene for given poses.

Poses are drawn by :func:`drr.poses.sample_pose` and passed in explicitly; every rendered view
carries its pose, its isocentre and its 3 × 4 projection matrix, so it can be reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drr.imaging import form_image
from drr.poses import Pose
from drr.presets import RenderPreset
from drr.projector import Projections, Scene, render

BACKENDS = ("builtin", "deepdrr")


@dataclass
class RenderedViews:
    """Views of one scene: images, maps and how each view was made.

    Attributes
    ----------
    images
        ``(B, H, W)`` float32 radiographs, ``−ln(I/I0)``.
    projections
        The projector's output (material line integrals, volume and mass maps).
    matrices
        ``(B, 3, 4)`` projection matrices (patient LPS mm → pixel).
    poses
        The pose of each view.
    isocentre
        LPS point the nominal view is centred on, mm.
    """

    images: np.ndarray
    projections: Projections
    matrices: np.ndarray
    poses: list[Pose]
    isocentre: np.ndarray


class Renderer:
    """Render views of scenes with one preset.

    Parameters
    ----------
    preset
        Geometry, pose ranges and physics.
    device
        ``cpu`` or ``cuda`` (``cuda:N``); the projector kernel follows (OpenCV on CPU, torch on CUDA).
    backend
        ``builtin`` or ``deepdrr`` (the image from DeepDRR, maps from the built-in projector).
    """

    def __init__(self, preset: RenderPreset, *, device: str = "cpu", backend: str = "builtin") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        if backend == "deepdrr":
            from drr.deepdrr_backend import check_available

            check_available()
        self.preset = preset
        self.device = device
        self.backend = backend

    def matrices(self, isocentre: np.ndarray, poses: Sequence[Pose]) -> np.ndarray:
        """Projection matrices ``(B, 3, 4)`` of ``poses`` about ``isocentre``."""
        geometry = self.preset.geometry
        return np.stack([geometry.projection_matrix(isocentre, pose.matrix(isocentre)) for pose in poses])

    def render(
        self,
        scene: Scene,
        poses: Sequence[Pose],
        *,
        isocentre: np.ndarray | None = None,
        rngs: Sequence[np.random.Generator] | None = None,
    ) -> RenderedViews:
        """Render ``scene`` at every pose.

        Parameters
        ----------
        isocentre
            Centre of the nominal view; default the scene's labelled centroid.
        rngs
            One random generator per view, for quantum noise.
        """
        if not poses:
            raise ValueError("no poses to render")
        centre = scene.centroid() if isocentre is None else np.asarray(isocentre, dtype=np.float64)
        matrices = self.matrices(centre, poses)
        geometry = self.preset.geometry
        projections = render(scene, geometry, matrices, device=self.device)
        if self.backend == "deepdrr":
            from drr.deepdrr_backend import deepdrr_images

            images = deepdrr_images(scene, geometry, matrices, self.preset.physics)
        else:
            images = np.stack(
                [
                    form_image(
                        projections.materials[b],
                        self.preset.physics,
                        pixel_spacing_mm=geometry.pixel_spacing,
                        rng=None if rngs is None else rngs[b],
                    )
                    for b in range(len(poses))
                ]
            )
        return RenderedViews(images, projections, matrices, list(poses), centre)
