"""`untwine evaluate PATH`: score saved codes (.npz with codes and factors) or a run directory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from untwine.errors import DataError
from untwine.io import atomic_write_bytes


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a representation with the disentanglement metrics",
        description="Score saved codes (a .npz with arrays 'codes' (N, D) and 'factors' (N, K) int) or a "
                    "run directory with the disentanglement metrics; print a table and write JSON.")
    p.add_argument("path", help=".npz file with codes and factors, or a run directory")
    p.add_argument("--metrics", default="standard",
                   help="comma-separated metric names or a preset: standard (default: every metric but "
                        "mig_sampling), full (adds mig_sampling, which scores every image of the dataset: "
                        "hours on a CPU for dSprites, seconds with --device cuda), fast")
    p.add_argument("--seed", type=int, default=0, help="seed of every sample the protocol draws (default 0)")
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="encoding batch size for a run directory (default: 64 on a CPU, 512 on a GPU)")
    p.add_argument("--device", default=None, help="torch device for a run directory (default cpu)")
    p.set_defaults(func=_evaluate)


_NPZ_HELP = "np.savez(path, codes=codes, factors=factor_classes[, factor_sizes=sizes])"


def load_codes_npz(path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(codes, factors, factor_sizes or None) from a .npz written by np.savez; a file that is not one
    (garbage, truncated, a pickle, a lone .npy, object arrays) is a DataError naming it. Never unpickles."""
    path = Path(path)
    expected = f"expected a .npz of numeric arrays 'codes' (N, D) and 'factors' (N, K), as {_NPZ_HELP} writes"
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as e:
        raise DataError(f"{str(path)!r} cannot be opened ({e}); {expected}") from e
    # a .npz is a zip archive; checked first because np.load takes anything else for a pickle and
    # says so in words that suggest unpickling the file
    if not head.startswith(b"PK\x03\x04"):
        what = "a single .npy array (np.save)" if head == b"\x93NUMPY" else f"not a zip archive (starts {head!r})"
        raise DataError(f"{str(path)!r} is {what}, not a .npz; {expected}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"codes", "factors"} - set(z.files)
            if missing:
                raise DataError(f"{str(path)!r} lacks array(s) {sorted(missing)}; it has {sorted(z.files)}. "
                                f"Save with {_NPZ_HELP}")
            return z["codes"], z["factors"], (z["factor_sizes"] if "factor_sizes" in z.files else None)
    except (DataError, MemoryError):
        raise
    # whatever np.load's parsers raise on a damaged archive: BadZipFile (truncated, bad CRC), ValueError
    # (object arrays, bad header), SyntaxError and tokenize.TokenError (a mangled header, which numpy
    # parses as a Python literal), OSError/EOFError (cut-off members)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{str(path)!r} is a damaged or unsupported .npz ({type(e).__name__}: {e}); "
                        f"{expected}") from e


def print_results(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from untwine.metrics.protocol import HEADLINE

    table = Table(title="disentanglement metrics")
    table.add_column("metric")
    table.add_column("score", justify="right")
    table.add_column("details")
    for name, res in results.items():
        if name.startswith("_"):
            continue
        if "skipped" in res:
            table.add_row(name, "-", f"skipped: {res['skipped']}")
            continue
        head = HEADLINE.get(name)
        scalars = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        others = ", ".join(f"{k}={v:.4g}" for k, v in scalars.items() if k != head)
        table.add_row(name, f"{res[head]:.4f}" if head in res else "-", others)
    meta = results.get("_meta", {})
    Console().print(table)
    Console().print(f"seed {meta.get('seed')}, encoded {meta.get('num_encoded', 0)} images, "
                    f"{meta.get('seconds', {}).get('total', sum(meta.get('seconds', {}).values())):.1f} s")


def print_stages(stages: dict) -> None:
    """Stage 1 against the combined model of a multi-stage run, one row per measure."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="multi-stage: stage 1 vs combined (disentanglement above is the same for both)")
    for col in ("measure", "stage 1", "combined"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    rows = [(f"reconstruction {k}", "reconstruction", k)
            for k in ("bce", "bce_excess", "sse", "mse", "psnr", "ssim")]
    # sampled bounds on log p(x) (never values at the posterior means); a flow or mixture's
    # log p2(x | y) is a conditional density given stage 1's image, not a bound on log p(x)
    rows += [("ELBO, sampled (nats)", "reconstruction", "elbo_sampled"),
             ("IWAE bound (nats)", "reconstruction", "iwae"),
             ("log p2(x | y), stage 2 given y (nats)", "reconstruction", "log_p_x_given_y")]
    rows += [(f"samples {k}", "samples", k) for k in ("fd", "precision", "recall")]
    rows += [("factor accuracy (mean)", "factor_accuracy", "mean")]
    for label, section, key in rows:
        vals = [stages.get(stage, {}).get(section, {}).get(key) for stage in ("stage1", "combined")]
        if all(v is None for v in vals):
            continue
        table.add_row(label, *("-" if v is None else f"{v:.4g}" for v in vals))
    combined = stages.get("combined", {})
    for label, section, key in (("w-invariance: share of factor predictions changed", "w_invariance", "overall"),
                                ("  the same on the factors stage 1 holds", "w_invariance", "held_overall"),
                                ("code invariance: share of stage 1's code variance w moves", "code_invariance",
                                 "overall")):
        v = combined.get(section, {}).get(key)
        if v is not None:
            table.add_row(label, "", f"{v:.3f}")
    Console().print(table)


def _evaluate(args) -> int:
    from untwine.metrics.protocol import evaluate, evaluate_arrays

    path = Path(args.path)
    if path.is_dir():
        from untwine.train.run import load_run
        run = load_run(path)
        # the encoder's (mean, logvar): the mean is the code, the log-variance serves mig_sampling
        results = evaluate(run.model.representation, run.data, metrics=args.metrics, seed=args.seed,
                           batch_size=args.batch_size, device=args.device, posterior=run.model.encode)
        results["_meta"]["run_dir"] = str(path)
        results["_meta"]["step"] = int(run.step)
        if hasattr(run.model, "stage2"):  # a multi-stage run: the scores above are stage 1's, exactly
            from untwine.multistage.evaluation import evaluate_multistage
            results["multistage"] = evaluate_multistage(run.model, run.data, seed=args.seed,
                                                        batch_size=min(args.batch_size or 64, 256))
    elif path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{str(path)!r} is not a .npz file or a run directory; give np.savez(path, "
                            f"codes=..., factors=...) output or a training run's directory")
        codes, factors, sizes = load_codes_npz(path)
        results = evaluate_arrays(codes, factors, metrics=args.metrics, seed=args.seed, factor_sizes=sizes)
        results["_meta"]["source"] = str(path)
    else:
        raise DataError(f"{str(path)!r} does not exist; give a .npz of codes and factors or a run directory")
    print_results({k: v for k, v in results.items() if k != "multistage"})
    if "multistage" in results:
        print_stages(results["multistage"])
    if args.out:
        atomic_write_bytes(args.out, (json.dumps(results, indent=2) + "\n").encode())
    return 0
