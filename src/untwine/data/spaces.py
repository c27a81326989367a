"""The factor spaces of the standard ground-truth datasets (DESIGN section 3).

Exact grids and value ranges of the original files, row-major (last factor fastest).
"""
from __future__ import annotations

import numpy as np

from untwine.data.factors import FactorSpace

DSPRITES = FactorSpace.from_values({
    "shape": [1.0, 2.0, 3.0],                       # square, ellipse, heart (values as in the .npz)
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": np.linspace(0.0, 2 * np.pi, 40),  # 0 and 2pi coincide in the original
    "posX": np.linspace(0.0, 1.0, 32),
    "posY": np.linspace(0.0, 1.0, 32),
})
DSPRITES_SHAPES = ("square", "ellipse", "heart")

SHAPES3D = FactorSpace.from_values({
    # DESIGN says "linspace(0,1,10)" after the dataset README; the .h5 labels are 0, 0.1, ..., 0.9
    # (hue is circular: 1.0 would repeat 0.0). Loaders map labels to classes by rank, so either works.
    "floor_hue": np.linspace(0.0, 0.9, 10),
    "wall_hue": np.linspace(0.0, 0.9, 10),
    "object_hue": np.linspace(0.0, 0.9, 10),
    "scale": np.linspace(0.75, 1.25, 8),
    "shape": np.arange(4, dtype=float),       # cube, cylinder, sphere, capsule
    "orientation": np.linspace(-30.0, 30.0, 15),
})
SHAPES3D_SHAPES = ("cube", "cylinder", "sphere", "capsule")

def _mpi3d_space(colours: int, shapes: int) -> FactorSpace:
    return FactorSpace.from_values({
        "object_color": np.arange(colours, dtype=float),
        "object_shape": np.arange(shapes, dtype=float),
        "object_size": np.arange(2, dtype=float),    # small, large
        "camera_height": np.arange(3, dtype=float),  # top, center, bottom
        "background_color": np.arange(3, dtype=float),  # purple, sea green, salmon
        "horizontal_axis": np.arange(40, dtype=float),
        "vertical_axis": np.arange(40, dtype=float),
    })


# the complete grid of the rr-learning release (1,036,800 images):
# colours white, green, red, blue, brown, olive; shapes cone, cube, cylinder, hexagonal, pyramid, sphere
MPI3D = _mpi3d_space(6, 6)
# the NeurIPS 2019 challenge files that disentanglement_lib reads as mpi3d_toy and mpi3d_realistic
# (factor sizes [4, 4, 2, 3, 3, 40, 40], 460,800 images): two colours and two shapes held out,
# which ones the files do not record, so the values are class numbers
MPI3D_WITHOUT_HELDOUT = _mpi3d_space(4, 4)
