"""Your own images (issue 27), measured on real artwork from Debian's packages: the Noto Color Emoji
font (fonts-noto-color-emoji) rendered to PNGs, one folder per Unicode emoji group
(unicode-data's emoji-test.txt: Smileys & Emotion, People & Body, ..., Flags) as labels.

    apt-get install -y fonts-noto-color-emoji unicode-data
    nice -n 10 .venv/bin/python benchmarks/bench_images.py [--steps 5000] [--ms-steps 3000] [--out DIR]

1. render every fully-qualified emoji (CLDR order) at the font's bitmap size (109 px) centred on a
   white 128x128 canvas, into OUT/emoji/<group>/<nnnn>.png;
2. decode the folder into untwine's cache (cold: images/s) and read the cache as training does
   (IndexSampler batches of 64 and 256: images/s, wall and CPU), beside the procedural renderers'
   ObservationSampler on dSprites and Shapes3D measured the same way in the same process;
3. train `images-betatcvae` on the folder and `images-ms-vae` on that run through the CLI, and collect
   held-out reconstruction (stage 1 against combined), sampled ELBO / IWAE, the FD and precision/
   recall of samples in the features of the classifier untwine trains on the groups, fidelity, and the
   pictures, into benchmarks/results/images/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "images"
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
CANVAS = 128
BITMAP_SIZE = 109  # Noto Color Emoji's CBDT strikes exist at this size only


def emoji_list() -> list[tuple[str, str, str]]:
    """(group, sequence, name) of each fully-qualified emoji, in emoji-test.txt's order; the
    Component group (skin tone and hair swatches) left out."""
    out, group = [], None
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line and group != "Component":
            codes, rest = line.split(";", 1)
            seq = "".join(chr(int(c, 16)) for c in codes.split())
            out.append((group, seq, rest.split("#", 1)[1].strip()))
    return out


def render(out: Path) -> dict:
    from PIL import Image, ImageDraw, ImageFont

    if not FONT.exists() or not EMOJI_TEST.exists():
        sys.exit(f"needs {FONT} and {EMOJI_TEST}: apt-get install -y fonts-noto-color-emoji unicode-data")
    font = ImageFont.truetype(str(FONT), BITMAP_SIZE)
    counts: dict[str, int] = {}
    skipped = 0
    t0 = time.perf_counter()
    for i, (group, seq, _name) in enumerate(emoji_list()):
        folder = out / group.replace(" & ", "_and_").replace(" ", "_").lower()
        folder.mkdir(parents=True, exist_ok=True)
        # draw on a large canvas, then centre the glyph's bounding box on the 128x128 one
        big = Image.new("RGBA", (2 * CANVAS + BITMAP_SIZE, 2 * CANVAS), (255, 255, 255, 0))
        ImageDraw.Draw(big).text((CANVAS // 2, CANVAS // 2), seq, font=font, embedded_color=True)
        box = big.getbbox()
        if box is None:
            skipped += 1
            continue
        glyph = big.crop(box)
        if glyph.width > CANVAS or glyph.height > CANVAS:  # a sequence the font draws as several glyphs
            skipped += 1
            continue
        canvas = Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255))
        canvas.paste(glyph, ((CANVAS - glyph.width) // 2, (CANVAS - glyph.height) // 2), glyph)
        canvas.save(folder / f"{i:04d}.png")
        counts[folder.name] = counts.get(folder.name, 0) + 1
    return {"images": sum(counts.values()), "per_group": counts, "skipped_multi_glyph": skipped,
            "seconds": round(time.perf_counter() - t0, 1)}


def throughput(folder: Path, cache: Path) -> dict:
    """Cold decode into the cache, then cache reads as training draws them, beside the renderers."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_data_throughput import rate  # the same measurement as the renderers' figures

    from untwine.data import get_dataset
    from untwine.data.samplers import ObservationSampler
    from untwine.train.batches import IndexSampler

    torch.set_num_threads(1)
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    ds = get_dataset("images", path=folder, cache_dir=cache)
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    get_dataset("images", path=folder, cache_dir=cache)
    hit = time.perf_counter() - t0
    out = {"dataset": repr(ds), "decode_seconds": round(decode, 2), "decode_images_per_s": round(len(ds) / decode),
           "cache_hit_seconds": round(hit, 3), "reads": []}
    # training reads a warm cache: map every page once first (the renderers' caches are warm by the
    # time they are measured too), so that first-touch page faults are not counted as reading
    out["warm_read_checksum"] = int(np.asarray(ds.array).sum(dtype=np.uint64))
    for batch in (64, 256):
        sampler = IndexSampler(ds, batch, seed=0)
        wall, cpu = rate(lambda: next(sampler), batch, 0.5, 5)
        out["reads"].append({"data": "images (cache)", "batch": batch, "wall": round(wall), "cpu": round(cpu)})
        for name in ("dsprites", "shapes3d"):
            data = get_dataset(name)
            obs = ObservationSampler(data, batch, seed=0)
            wall, cpu = rate(lambda: next(obs), batch, 0.5, 5)
            out["reads"].append({"data": f"{name} (renderer)", "batch": batch, "wall": round(wall), "cpu": round(cpu)})
    return out


def untwine(*args: str, cache: Path) -> float:
    env = dict(os.environ, UNTWINE_CACHE=str(cache))
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "untwine"), *args], check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/untwine-bench-images"))
    ap.add_argument("--steps", type=int, default=5000, help="beta-TCVAE steps (images-betatcvae)")
    ap.add_argument("--ms-steps", type=int, default=3000, help="multi-stage VAE stage-2 steps (images-ms-vae)")
    ap.add_argument("--batch-size", type=int, default=64, help="optim.batch_size of both stages")
    ap.add_argument("--skip-train", action="store_true", help="collect the runs already under --out")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    folder, cache = args.out / "emoji", args.out / "cache"
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    if not folder.exists():
        summary["render"] = render(folder)
        print(json.dumps(summary["render"], indent=1), flush=True)
    if not args.skip_throughput:
        summary["throughput"] = throughput(folder, cache)
        print(json.dumps(summary["throughput"], indent=1), flush=True)
    batch = f"optim.batch_size={args.batch_size}"
    stage1, ms = args.out / "betatcvae", args.out / "ms-vae"
    if not args.skip_train:
        for run in (stage1, ms):
            shutil.rmtree(run, ignore_errors=True)
        summary["stage1_seconds"] = untwine("train", "images-betatcvae", f"data.path={folder}",
                                            f"trainer.steps={args.steps}", batch, "--run-dir", str(stage1), cache=cache)
        summary["ms_seconds"] = untwine("train", "images-ms-vae", f"stage1={stage1}", f"trainer.steps={args.ms_steps}",
                                        batch, "--run-dir", str(ms), cache=cache)
    if (ms / "metrics.json").exists():  # also after --skip-train: collect runs trained (or resumed) by hand
        summary["stage1_metrics"] = json.loads((stage1 / "metrics.json").read_text())
        summary["ms_metrics"] = json.loads((ms / "metrics.json").read_text())
        for run, names in ((stage1, ("reconstructions.png", "traversals.png")),
                           (ms, ("side_by_side.png", "samples.png", "traversals.png"))):
            for name in names:
                shutil.copy(run / "pictures" / name, RESULTS / f"{run.name}-{name}")
        subprocess.run([str(ROOT / ".venv" / "bin" / "untwine"), "data", "show", str(folder), "--out",
                        str(RESULTS / "emoji-preview.png")], check=True, env=dict(os.environ, UNTWINE_CACHE=str(cache)))
    summary["args"] = {k: str(v) for k, v in vars(args).items()}
    old = json.loads((RESULTS / "summary.json").read_text()) if (RESULTS / "summary.json").exists() else {}
    (RESULTS / "summary.json").write_text(json.dumps({**old, **summary}, indent=1, default=str))
    print(f"wrote {RESULTS / 'summary.json'}")


if __name__ == "__main__":
    main()
