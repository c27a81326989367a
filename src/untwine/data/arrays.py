"""A ground-truth dataset held as one uint8 array in the factor space's row-major order.

Used by the loaders of the original files (dSprites .npz, Shapes3D .h5 read into memory, MPI3D
.npz memory-mapped) and handy in tests: any (N, H, W, C) uint8 array whose image i shows the factor
vector `factor_space.classes_of(i)` becomes a `GroundTruthData`.

Binary images (dSprites) can be stored bit-packed, one bit a pixel (8x smaller): 2.8 GB of dSprites
as uint8 is 377 MB packed. Batches gather packed rows and unpack straight into the float tensor.
"""
from __future__ import annotations

import numpy as np
import torch

from untwine.data.base import GroundTruthData
from untwine.data.factors import FactorSpace
from untwine.errors import DataError


def pack_binary_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) images whose pixels are off (0) or on (non-zero) -> (N, ceil(H*W*C/8)) packed bits.

    Pixel order inside a row is the flattened (H, W, C) order, so unpacking and reshaping to
    (H, W, C) restores the image.
    """
    arr = np.asarray(images)
    if arr.ndim not in (3, 4):
        raise DataError(f"binary images must have shape (N, H, W) or (N, H, W, C); got shape {arr.shape}")
    flat = arr.reshape(arr.shape[0], -1)
    return np.packbits(flat != 0, axis=1)


class ArrayGroundTruthData(GroundTruthData):
    """Images in an array, row i showing factor vector `factor_space.classes_of(i)`.

    Args:
        name: dataset name (for messages and the registry).
        factor_space: the grid; its length must equal the number of images.
        images: uint8 (N, H, W, C) or (N, H, W) images (0..255; a numpy array or np.memmap), or,
            with `packed=True`, the (N, ceil(H*W*C/8)) output of `pack_binary_images`.
        image_shape: (C, H, W); required when packed, checked otherwise.
        packed: images are bit-packed binary images (on pixels come out as 255 / 1.0).
    """

    def __init__(self, name: str, factor_space: FactorSpace, images: np.ndarray,
                 image_shape: tuple[int, int, int] | None = None, packed: bool = False):
        if not isinstance(factor_space, FactorSpace):
            raise DataError(f"factor_space must be a FactorSpace; got {type(factor_space).__name__}")
        if not isinstance(images, np.ndarray):  # np.memmap is an ndarray
            raise DataError(f"images must be a numpy uint8 array; got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise DataError(f"images must have dtype uint8 (0..255 or packed bits); got {images.dtype}. "
                            f"Convert float images in [0, 1] with (x * 255).round().astype(np.uint8)")
        n = len(factor_space)
        if images.shape[0] != n:
            raise DataError(
                f"dataset {name!r}: {images.shape[0]} images for a factor space of {n} factor vectors "
                f"{factor_space!r}; give one image per grid point, in row-major order")
        if packed:
            if image_shape is None or len(image_shape) != 3:
                raise DataError(f"packed images need image_shape=(C, H, W); got {image_shape}")
            c, h, w = (int(v) for v in image_shape)
            want = (n, (c * h * w + 7) // 8)
            if images.shape != want:
                raise DataError(f"packed images of shape (C, H, W)={image_shape} must have shape {want} "
                                f"(N, ceil(C*H*W/8)); got {images.shape}")
        else:
            if images.ndim == 3:
                images = images[..., None]
            if images.ndim != 4:
                raise DataError(f"images must have shape (N, H, W, C) or (N, H, W); got {images.shape}")
            c, h, w = images.shape[3], images.shape[1], images.shape[2]
            if image_shape is not None and tuple(image_shape) != (c, h, w):
                raise DataError(f"image_shape {tuple(image_shape)} disagrees with the images' (C, H, W) "
                                f"{(c, h, w)}; leave image_shape out or fix it")
        self.name = name
        self.factor_space = factor_space
        self.image_shape = (c, h, w)
        self.packed = bool(packed)
        self._array = images

    @property
    def array(self) -> np.ndarray:
        """The stored array (packed bits or uint8 images), read-only use."""
        return self._array

    def nbytes(self) -> int:
        return int(self._array.nbytes)

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        idx = self.factor_space.check_indices(np.asarray(indices).reshape(-1))
        return np.asarray(np.take(self._array, idx, axis=0))  # a plain array, also from a memmap

    def _unpack(self, rows: np.ndarray) -> np.ndarray:
        """(B, bytes) packed rows -> (B, H*W*C) uint8 of 0/1."""
        c, h, w = self.image_shape
        return np.unpackbits(rows, axis=1, count=c * h * w)

    def images(self, indices: np.ndarray) -> np.ndarray:
        rows = self._gather(indices)
        c, h, w = self.image_shape
        if self.packed:
            return (self._unpack(rows) * np.uint8(255)).reshape(-1, h, w, c)
        return rows

    def batch(self, indices: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        rows = self._gather(indices)
        c, h, w = self.image_shape
        b = rows.shape[0]
        if self.packed:
            # 0/1 bits are already the [0, 1] values: no division.
            bits = torch.from_numpy(self._unpack(rows)).view(b, h, w, c)
            if device is not None:
                bits = bits.to(device)
            x = bits.permute(0, 3, 1, 2)
            return x.float() if c == 1 else torch.empty(x.shape, device=x.device).copy_(x)
        return uint8_batch(rows, device)


def uint8_batch(rows: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images (B, H, W, C) -> float32 (B, C, H, W) in [0, 1]: moved as uint8 (4x fewer bytes),
    converted on the device in one fused copy (also the image sets' gather, data/images.py)."""
    u8 = torch.from_numpy(np.ascontiguousarray(rows))
    if device is not None:
        u8 = u8.to(device)
    x = u8.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        return x.float().div_(255.0)
    return torch.empty(x.shape, device=x.device).copy_(x).div_(255.0)
