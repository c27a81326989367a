"""Procedural Shapes3D: 480,000 colour 64x64 images of an object in the corner of a room.

Factors (untwine.data.spaces.SHAPES3D, row-major, orientation fastest): floor_hue 10, wall_hue 10,
object_hue 10 (0, 0.1, ..., 0.9), scale 8 (linspace(0.75, 1.25, 8)), shape 4 (cube, cylinder,
sphere, capsule), orientation 15 (linspace(-30, 30, 15) degrees).

The scene, ray cast once per pixel (vectorised) with a pinhole camera:
- a floor (plane y = 0) and two walls meeting in a corner behind the object, at 45 degrees to the
  view; the floor is lit more than the right wall, the right wall more than the left one;
- the object standing on the floor at the origin: cube (side s), cylinder (diameter s, height s),
  sphere (diameter s), capsule (diameter 0.7 s, height 1.4 s), with s = scale;
- a directional light fixed in the scene; Lambert shading with an ambient term.
Orientation turns the whole scene (room, object and light) about the vertical axis through the
object, as the original's camera does: the wall corner moves right as orientation grows (it is in
the middle of the picture at 0 degrees, about 2 px a step), the cube shows its faces at another
angle. Hues are HSV hues (saturation 0.9, value 1) times the shading.

Symmetries (the tests rely on them): cylinder, sphere and capsule are symmetric under rotation
about the vertical axis, so their *silhouettes* do not change with orientation; their images still
do, since the room turns with them (so does the shading, the light turning with the scene). No two
factor vectors give the same image.

Rendering a batch: every image is `object layer | (background layer & not-object)` where the
object layer depends only on (scale, shape, orientation, object_hue) and the background only on
(orientation, floor_hue, wall_hue). Both are precomputed (about 80 MB of uint8, built in about a
second), so an image costs three row gathers and two bitwise operations. `cached=True` writes
all 480,000 images (5.9 GB of uint8) into the on-disk cache instead and memory-maps them.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from untwine.data.base import GroundTruthData
from untwine.data.cache import open_array
from untwine.data.spaces import SHAPES3D, SHAPES3D_SHAPES

RENDERER_VERSION = "shapes3d-1"
SIZE = 64
SATURATION = 0.9
AMBIENT = 0.35

# Scene (units: the object's scale); y up, the camera looks along +z at orientation 0.
CAMERA = np.array([0.0, 2.1, -4.6])
TARGET = np.array([0.0, 0.75, 0.0])
FOV_DEG = 46.0
CORNER_DISTANCE = 2.6               # the walls are the planes z = D - |x|
LIGHT = np.array([-0.45, 1.0, -0.7])

FLOOR, WALL, OBJECT = 0, 1, 2

N_HUE = 10
N_SCALE, N_SHAPE, N_ORIENT = 8, 4, 15
N_GEOMETRY = N_SCALE * N_SHAPE * N_ORIENT  # 480: the last three factors
BLOCK = 256  # images rendered at a time


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def camera_rays() -> tuple[np.ndarray, np.ndarray]:
    """Ray origins (15, 3) and unit directions (15, H*W, 3) in scene coordinates per orientation."""
    forward = _unit(TARGET - CAMERA)
    right = _unit(np.cross([0.0, 1.0, 0.0], forward))
    up = np.cross(forward, right)
    half = np.tan(np.radians(FOV_DEG) / 2)
    c = ((np.arange(SIZE) + 0.5) / SIZE - 0.5) * 2 * half
    px = np.broadcast_to(c[None, :], (SIZE, SIZE)).reshape(-1)      # column -> right
    py = np.broadcast_to(-c[:, None], (SIZE, SIZE)).reshape(-1)     # row -> down
    dirs = _unit(forward + px[:, None] * right + py[:, None] * up)   # (HW, 3)
    # Turning the scene by +phi about y = turning camera and rays by -phi.
    phi = np.radians(SHAPES3D.factors[5].values)
    cos, sin = np.cos(-phi), np.sin(-phi)
    rot = np.zeros((len(phi), 3, 3))
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = cos, sin, 1.0, -sin, cos
    return rot @ CAMERA, np.einsum("oij,pj->opi", rot, dirs)


def _lambert(normal: np.ndarray) -> np.ndarray:
    return AMBIENT + (1 - AMBIENT) * np.clip(normal @ _unit(LIGHT), 0.0, None)


def background(origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Region (FLOOR or WALL) and shade of the room behind each ray, (15, HW) each.

    The room {y >= 0, z <= D - |x|} is convex and holds the camera: a ray leaves it through the
    first bounding plane it moves out of.
    """
    o = origins[:, None, :]
    dx, dy, dz = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    ox, oy, oz = o[..., 0], o[..., 1], o[..., 2]
    d = CORNER_DISTANCE
    inf = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dy < 0, -oy / dy, inf)
        t_left = np.where(dz - dx > 0, (d - oz + ox) / (dz - dx), inf)    # plane z - x = D (x < 0)
        t_right = np.where(dz + dx > 0, (d - oz - ox) / (dz + dx), inf)   # plane z + x = D (x > 0)
    ts = np.stack([t_floor, t_left, t_right])
    which = ts.argmin(axis=0)
    normals = _unit(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, -1.0], [-1.0, 0.0, -1.0]]))
    shade = _lambert(normals)[which]
    region = np.where(which == 0, FLOOR, WALL).astype(np.uint8)
    return region, shade


def _hit_box(o, d, half, height):
    """Nearest positive hit t and outward normal of the box [-h,h] x [0,height] x [-h,h] (slabs)."""
    lo = np.array([-half, 0.0, -half])
    hi = np.array([half, height, half])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - o) / d, (hi - o) / d
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = tmin.argmax(axis=-1)[..., None]
    t_near, t_far = tmin.max(axis=-1), tmax.min(axis=-1)
    hit = (t_near <= t_far) & (t_near > 0)
    normal = np.zeros(d.shape)
    np.put_along_axis(normal, axis, -np.sign(np.take_along_axis(d, axis, axis=-1)), axis=-1)
    return np.where(hit, t_near, np.inf), normal


def _hit_upright_capsule(o, d, radius, y0, y1, caps: str):
    """Nearest hit of a vertical cylinder of `radius` between y0 and y1, closed by flat disks
    (caps='flat') or hemispheres (caps='round'). y0 == y1 with round caps is a sphere."""
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = 2 * (o[..., 0] * d[..., 0] + o[..., 2] * d[..., 2])
    c = o[..., 0] ** 2 + o[..., 2] ** 2 - radius ** 2
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2 * a)
    y_side = o[..., 1] + t_side * d[..., 1]
    side_ok = (disc >= 0) & (t_side > 0) & (y_side >= y0) & (y_side <= y1)
    cands = [np.where(side_ok, t_side, np.inf)]
    p_side = o + t_side[..., None] * d
    normals = [np.stack([p_side[..., 0], np.zeros_like(t_side), p_side[..., 2]], -1) / radius]
    if caps == "flat":
        for y_cap, ny in ((y1, 1.0), (y0, -1.0)):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (y_cap - o[..., 1]) / d[..., 1]
            p = o + t[..., None] * d
            ok = (t > 0) & (p[..., 0] ** 2 + p[..., 2] ** 2 <= radius ** 2)
            cands.append(np.where(ok, t, np.inf))
            normals.append(np.broadcast_to(np.array([0.0, ny, 0.0]), p.shape))
    else:
        for yc in (y0, y1):
            oc = o - np.array([0.0, yc, 0.0])
            bb = np.sum(oc * d, axis=-1)
            cc = np.sum(oc * oc, axis=-1) - radius ** 2
            disc_s = bb * bb - cc
            with np.errstate(invalid="ignore"):
                t = -bb - np.sqrt(disc_s)
            ok = (disc_s >= 0) & (t > 0)
            cands.append(np.where(ok, t, np.inf))
            normals.append((oc + t[..., None] * d) / radius)
    ts = np.stack(cands)
    k = ts.argmin(axis=0)
    normal = np.take_along_axis(np.stack(normals), k[None, ..., None], axis=0)[0]
    return ts.min(axis=0), normal


def object_hits(origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object mask and shade, (8 scales, 4 shapes, 15 orientations, HW) each."""
    scales = SHAPES3D.factors[3].values
    o = np.broadcast_to(origins[:, None, :], dirs.shape)
    mask = np.zeros((N_SCALE, N_SHAPE) + dirs.shape[:2], dtype=bool)
    shade = np.zeros(mask.shape)
    for i, s in enumerate(scales):
        for j, shape in enumerate(SHAPES3D_SHAPES):
            if shape == "cube":
                t, n = _hit_box(o, dirs, s / 2, s)
            elif shape == "cylinder":
                t, n = _hit_upright_capsule(o, dirs, s / 2, 0.0, s, "flat")
            elif shape == "sphere":
                t, n = _hit_upright_capsule(o, dirs, s / 2, s / 2, s / 2, "round")
            else:  # capsule
                r = 0.35 * s
                t, n = _hit_upright_capsule(o, dirs, r, r, 1.4 * s - r, "round")
            mask[i, j] = np.isfinite(t)
            shade[i, j] = np.where(mask[i, j], _lambert(n), 0.0)
    return mask, shade


def hue_rgb(hues: np.ndarray) -> np.ndarray:
    """(n,) hues in [0, 1) -> (n, 3) RGB in [0, 1]."""
    from matplotlib.colors import hsv_to_rgb  # imported here: `untwine --help` stays fast

    hsv = np.stack([hues, np.full_like(hues, SATURATION), np.ones_like(hues)], axis=-1)
    return hsv_to_rgb(hsv)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


class Shapes3D(GroundTruthData):
    """Procedural Shapes3D (3 x 64 x 64), rendered on demand from precomputed layers.

    Args:
        cached: write all 480,000 images (5.9 GB uint8) into the on-disk cache once, in chunks with
            a progress bar, and memory-map them; default False renders on demand (faster than
            reading the cache back, and no disk).
        cache_dir: cache directory (default $UNTWINE_CACHE or ~/.cache/untwine).
        progress: show a progress bar while building the cache.
    """

    name = "shapes3d"
    factor_space = SHAPES3D
    image_shape = (3, SIZE, SIZE)

    def __init__(self, cached: bool = False, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True):
        origins, dirs = camera_rays()
        bg_region, bg_shade = background(origins, dirs)               # (15, HW)
        obj_mask, obj_shade = object_hits(origins, dirs)              # (8, 4, 15, HW)
        self.background_region = bg_region.reshape(N_ORIENT, SIZE, SIZE)
        self.object_mask = obj_mask.reshape(N_GEOMETRY, SIZE, SIZE)   # geometry = index % 480
        rgb = hue_rgb(SHAPES3D.factors[0].values).astype(np.float32)  # (10, 3), same for all hues
        # Layers as (rows, 3, H, W) uint8, built one hue and channel at a time (float32, small temporaries).
        is_floor = (bg_region == FLOOR).reshape(N_ORIENT, SIZE, SIZE)
        bg_shade = bg_shade.astype(np.float32).reshape(N_ORIENT, SIZE, SIZE)
        hued = _to_u8(bg_shade[:, None, None] * rgb[None, :, :, None, None])  # (15, 10, 3, H, W)
        bg = np.where(is_floor[:, None, None, None], hued[:, :, None], hued[:, None, :])
        obj_shade = obj_shade.astype(np.float32).reshape(N_GEOMETRY, SIZE, SIZE)
        obj = np.empty((N_GEOMETRY, N_HUE, 3, SIZE, SIZE), dtype=np.uint8)
        for h in range(N_HUE):
            for ch in range(3):
                obj[:, h, ch] = _to_u8(obj_shade * rgb[h, ch])
        # bg[o, floor_hue, wall_hue]: floor pixels take the floor hue, wall pixels the wall hue.
        self._bg = torch.from_numpy(np.ascontiguousarray(bg).reshape(-1, 3, SIZE, SIZE))
        self._obj = torch.from_numpy(obj.reshape(-1, 3, SIZE, SIZE))
        # 255 where the background shows, 0 on the object (the object layer is 0 off the object).
        self._keep = torch.from_numpy(np.where(self.object_mask[:, None], 0, 255).astype(np.uint8))
        self._images: np.ndarray | None = None
        if cached:
            self._images = open_array(
                "shapes3d-images", shape=(len(SHAPES3D), SIZE, SIZE, 3), dtype=np.uint8,
                version=RENDERER_VERSION, chunks=self._image_chunks, cache_dir=cache_dir,
                progress=progress, description="rendering Shapes3D")

    @property
    def cached(self) -> bool:
        return self._images is not None

    def _render_blocks(self, idx: np.ndarray):
        """Yield (start, uint8 (n, 3, H, W)) for consecutive blocks of `idx` (valid indices).

        Blocks of BLOCK images keep the working set in the CPU caches and reuse one scratch buffer
        (the yielded tensor is overwritten by the next block): large batches then cost no more per
        image than small ones.
        """
        t = torch.from_numpy(idx)
        scratch = torch.empty((min(BLOCK, len(idx)), 3, SIZE, SIZE), dtype=torch.uint8)
        keep = torch.empty((len(scratch), 1, SIZE, SIZE), dtype=torch.uint8)
        obj = torch.empty_like(scratch)
        for start in range(0, len(idx), BLOCK):
            b = t[start:start + BLOCK]
            n = len(b)
            geometry = b % N_GEOMETRY
            object_hue = (b // N_GEOMETRY) % N_HUE
            floor_hue = b // (N_GEOMETRY * N_HUE * N_HUE)
            wall_hue = (b // (N_GEOMETRY * N_HUE)) % N_HUE
            bg_row = ((b % N_ORIENT) * N_HUE + floor_hue) * N_HUE + wall_hue
            # index_select + bitwise ops: several times faster than fancy indexing and torch.where.
            out = torch.index_select(self._bg, 0, bg_row, out=scratch[:n])
            out &= torch.index_select(self._keep, 0, geometry, out=keep[:n])
            out |= torch.index_select(self._obj, 0, geometry * N_HUE + object_hue, out=obj[:n])
            yield start, out

    def _render_nhwc(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (N, H, W, 3) images of valid indices, written into `out` if given."""
        if out is None:
            out = np.empty((len(idx), SIZE, SIZE, 3), dtype=np.uint8)
        dst = torch.from_numpy(out)
        for start, block in self._render_blocks(idx):
            dst[start:start + len(block)] = block.permute(0, 2, 3, 1)
        return out

    def _image_chunks(self, rows: int = 4800):
        """All images in index order, `rows` at a time (one reused buffer: consume each chunk at once)."""
        buf = np.empty((rows, SIZE, SIZE, 3), dtype=np.uint8)
        for start in range(0, len(SHAPES3D), rows):
            idx = np.arange(start, min(start + rows, len(SHAPES3D)), dtype=np.int64)
            yield self._render_nhwc(idx, buf[: len(idx)])

    def images(self, indices: np.ndarray) -> np.ndarray:
        """uint8 images (N, 64, 64, 3)."""
        idx = self.factor_space.check_indices(np.asarray(indices).reshape(-1))
        if self._images is not None:
            return np.take(self._images, idx, axis=0)
        return self._render_nhwc(idx)

    def batch(self, indices: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 (N, 3, 64, 64) in [0, 1]."""
        idx = self.factor_space.check_indices(np.asarray(indices).reshape(-1))
        if self._images is not None:
            u8 = torch.from_numpy(np.take(self._images, idx, axis=0)).permute(0, 3, 1, 2)
            if device is not None:
                u8 = u8.to(device)  # move uint8 (4x fewer bytes), convert there
            return torch.empty(u8.shape, dtype=torch.float32, device=u8.device).copy_(u8).div_(255.0)
        if device is not None and torch.device(device).type != "cpu":
            u8 = torch.empty((len(idx), 3, SIZE, SIZE), dtype=torch.uint8)
            for start, block in self._render_blocks(idx):
                u8[start:start + len(block)] = block
            return u8.to(device).float().div_(255.0)  # move uint8 (4x fewer bytes), convert there
        out = torch.empty((len(idx), 3, SIZE, SIZE), dtype=torch.float32)
        for start, block in self._render_blocks(idx):
            out[start:start + len(block)].copy_(block).div_(255.0)  # while the block is in cache
        return out

    def regions(self, indices: np.ndarray) -> np.ndarray:
        """(N, 64, 64) uint8 region of each pixel: 0 floor, 1 wall, 2 object."""
        idx = self.factor_space.check_indices(np.asarray(indices).reshape(-1))
        out = self.background_region[idx % N_ORIENT].copy()
        out[self.object_mask[idx % N_GEOMETRY]] = OBJECT
        return out

    def __repr__(self) -> str:
        return f"Shapes3D(cached={self.cached})"
