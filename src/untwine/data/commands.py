"""`untwine data show|info|render`: look at a dataset from the command line: a ground-truth factor
dataset, or a folder (or .npy/.npz) of your own images (`untwine data show DIR`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from untwine.errors import DataError
from untwine.io import atomic_write

TRAVERSAL_STEPS = 10   # at most this many classes of a factor in its traversal row
SAMPLE_ROWS = 2        # rows of random samples above the traversals


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="look at a dataset, a ground-truth grid or a folder of your own images (show, info, render)",
                                 description="Look at a ground-truth factor dataset.")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")

    def common(p):
        p.add_argument("name", help="dataset name: dsprites, shapes3d, mpi3d, cars3d, smallnorb (or smallnorb_disent), "
                                    "images, celeba; or the path of a folder of images or a .npy/.npz array")
        p.add_argument("--path", default=None, help="the original dataset file (.npz / .h5) or folder (Cars3D .mat files, SmallNORB files) instead of rendering")
        p.add_argument("--cache-dir", default=None,
                       help="cache directory (default: $UNTWINE_CACHE or ~/.cache/untwine)")

    show = sub.add_parser("show", help="write a PNG of random samples and a traversal of each factor "
                                       "(an image folder: samples and a row per label class)")
    common(show)
    show.add_argument("--out", default=None, help="PNG file to write (default: NAME.png)")
    show.add_argument("--seed", type=int, default=0, help="seed of the random samples (default 0)")
    show.set_defaults(func=_show)

    info = sub.add_parser("info", help="print the factor table")
    common(info)
    info.set_defaults(func=_info)

    render = sub.add_parser("render", help="render the whole dataset into the on-disk cache")
    common(render)
    render.set_defaults(func=_render)

    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])


def _as_image_path(name: str) -> bool:
    """A name that is no dataset but an existing path: your own images (a wrong kind of file is
    then named by the images loader)."""
    from untwine.data.registry import _canonical

    try:
        _canonical(name)
        return False
    except DataError:
        return Path(name).expanduser().exists()


def _dataset(args, **kw):
    from untwine.data.registry import get_dataset

    if args.path is None and _as_image_path(args.name):
        return get_dataset("images", cache_dir=args.cache_dir, path=args.name)
    return get_dataset(args.name, cache_dir=args.cache_dir, path=args.path, **kw)


# -- show ----------------------------------------------------------------------
def _mosaic(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """(n, H, W, C) uint8 -> one (H, n*(W+gap)-gap, C) strip, images separated by white gaps."""
    n, h, w, c = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (0, gap), (0, 0)), constant_values=255)
    return padded.transpose(1, 0, 2, 3).reshape(h, n * (w + gap), c)[:, : n * (w + gap) - gap]


def traversal_classes(size: int, steps: int = TRAVERSAL_STEPS) -> np.ndarray:
    """Up to `steps` evenly spaced classes of a factor with `size` classes, first and last included."""
    return np.unique(np.round(np.linspace(0, size - 1, min(size, steps))).astype(np.int64))


IMAGE_SAMPLE_ROWS = 4   # rows of random samples of an image set
MAX_CLASS_ROWS = 8      # at most this many label classes, a row each


def show_images_figure(dataset, seed: int = 0):
    """An image set without factors: rows of random samples, then (with one label of few classes, as
    a folder's subfolders) a row of each class."""
    rng = np.random.default_rng(seed)
    n = len(dataset)
    per_row = TRAVERSAL_STEPS
    take = rng.choice(n, size=min(n, IMAGE_SAMPLE_ROWS * per_row), replace=False)
    rows = [(f"random samples ({len(take)} of {n:,})" if i == 0 else "", dataset.images(np.sort(take[i::IMAGE_SAMPLE_ROWS])))
            for i in range(min(IMAGE_SAMPLE_ROWS, len(take)))]
    labels = dataset.labels
    if labels is not None and labels.num_factors == 1 and labels.sizes[0] <= MAX_CLASS_ROWS:
        for c, value in enumerate(labels.values[0]):
            members = np.flatnonzero(labels.classes[:, 0] == c)
            pick = rng.choice(members, size=min(per_row, len(members)), replace=False)
            rows.append((f"{labels.names[0]} = {value} ({len(members):,} images)", dataset.images(np.sort(pick))))
    fig = _strips_figure(rows, per_row)
    c, h, w = dataset.image_shape
    k = len(dataset.skipped)
    skipped = f", {k} unreadable file{'s' if k > 1 else ''} skipped" if k else ""
    fig.suptitle(f"{dataset.name}: {n:,} images {'colour' if c == 3 else 'grey'} {h}x{w}, "
                 f"{dataset.evaluation_split.num_eval:,} held out{skipped}", fontsize=9)
    fig.tight_layout()
    return fig


def _strips_figure(rows, per_row: int):
    """One labelled strip of images per row ((label, images) pairs; an empty label: no title)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 0.75, len(rows) * 0.95), squeeze=False)
    for ax, (label, imgs) in zip(axes[:, 0], rows):
        strip = _mosaic(imgs)
        if strip.shape[2] == 1:
            ax.imshow(strip[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(strip, interpolation="nearest")
        if label:
            ax.set_title(label, fontsize=8, loc="left", pad=2)
        ax.set_anchor("W")  # short strips start at the left edge like the others
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig


def show_figure(dataset, seed: int = 0):
    """A matplotlib figure: random samples, then one labelled traversal row per factor (an image
    set without factors: show_images_figure)."""
    if dataset.factor_space is None:
        return show_images_figure(dataset, seed)
    space = dataset.factor_space
    rng = np.random.default_rng(seed)
    samples = dataset.images(space.index_of(space.sample(SAMPLE_ROWS * TRAVERSAL_STEPS, rng)))
    base = space.sample(1, rng)[0]
    rows = [(f"random samples ({len(samples) // SAMPLE_ROWS})", samples[i::SAMPLE_ROWS])
            for i in range(SAMPLE_ROWS)]
    for k, factor in enumerate(space.factors):
        classes = traversal_classes(factor.size)
        vecs = np.repeat(base[None], len(classes), axis=0)
        vecs[:, k] = classes
        lo, hi = factor.values[classes[0]], factor.values[classes[-1]]
        label = f"{factor.name}  ({factor.size} values, {lo:.3g} .. {hi:.3g})"
        rows.append((label, dataset.images(space.index_of(vecs))))
    fig = _strips_figure(rows, TRAVERSAL_STEPS)
    fixed = ", ".join(f"{n}={int(c)}" for n, c in zip(space.names, base))
    fig.suptitle(f"{dataset.name}: traversals from ({fixed})", fontsize=9)
    fig.tight_layout()
    return fig


def _show(args) -> int:
    import matplotlib.pyplot as plt

    dataset = _dataset(args)
    out = Path(args.out) if args.out else Path(f"{dataset.name}.png")
    if out.suffix.lower() != ".png":
        raise DataError(f"--out must name a .png file; got {str(out)!r}")
    fig = show_figure(dataset, seed=args.seed)
    try:
        atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=110))
    except OSError as e:
        raise DataError(f"cannot write {str(out)!r} ({e.strerror or e}); choose another --out") from e
    finally:
        plt.close(fig)
    print(f"wrote {out}")
    return 0


# -- info ----------------------------------------------------------------------
def _info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    if (args.path is None and _as_image_path(args.name)) or args.name in ("images", "celeba"):
        return _info_images(_dataset(args))
    if args.path is None:
        # Procedural datasets: the factor table needs no rendering.
        from untwine.data.registry import _canonical

        key, _ = _canonical(args.name)
        if key == "dsprites":
            from untwine.data.dsprites import DSprites as cls
        elif key == "shapes3d":
            from untwine.data.shapes3d import Shapes3D as cls
        else:
            cls = _dataset(args)  # raises: needs --path
        name, space, shape = cls.name, cls.factor_space, cls.image_shape
        source = "procedural (rendered on demand; `untwine data render` fills the cache)"
    else:
        ds = _dataset(args)
        name, space, shape = ds.name, ds.factor_space, ds.image_shape
        source = str(args.path)
    table = Table(title=f"{name}: factors (row-major, last fastest)")
    for col, justify in (("factor", "left"), ("size", "right"), ("min", "right"), ("max", "right"),
                         ("values", "left")):
        table.add_column(col, justify=justify)
    for f in space.factors:
        vals = f.values
        preview = ", ".join(f"{v:.3g}" for v in vals[:4]) + (", ..." if len(vals) > 4 else "")
        table.add_row(f.name, str(f.size), f"{vals.min():.4g}", f"{vals.max():.4g}", preview)
    console = Console()
    console.print(table)
    c, h, w = shape
    console.print(f"images: {len(space):,}   image shape (C, H, W): ({c}, {h}, {w})   source: {source}")
    return 0


def _info_images(ds) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    c, h, w = ds.image_shape
    split = ds.evaluation_split
    console.print(f"{ds.name}: {len(ds):,} images, {'colour' if c == 3 else 'grey'} {h}x{w}; {split.num_eval:,} held "
                  f"out for evaluation, {split.num_train:,} for training; source: {ds.source}")
    if ds.skipped:
        console.print(f"{len(ds.skipped)} unreadable files skipped, e.g. {', '.join(ds.skipped[:3])}")
    if ds.labels is None:
        console.print("no labels: evaluation reports what needs none (reconstruction, bounds, total correlation, ...)")
        return 0
    table = Table(title=f"{ds.name}: labels (weak factors, for probes and the classifier of sample quality)")
    for col in ("label", "classes", "most frequent class (share)"):
        table.add_column(col)
    for k, name in enumerate(ds.labels.names):
        counts = np.bincount(ds.labels.classes[:, k], minlength=ds.labels.sizes[k])
        top = int(counts.argmax())
        table.add_row(name, str(ds.labels.sizes[k]), f"{ds.labels.values[k][top]} ({counts[top] / len(ds):.1%})")
    console.print(table)
    return 0


# -- render --------------------------------------------------------------------------
def _render(args) -> int:
    if args.path is not None:
        raise DataError("`untwine data render` renders the procedural datasets; leave out --path")
    ds = _dataset(args, cached=True)
    print(f"{ds.name}: {len(ds):,} images cached and verified")
    return 0
