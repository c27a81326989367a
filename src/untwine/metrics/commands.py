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
    """The scores with their protocol (and, for a multi-stage run's "multistage", stage 1 against the
    combined model), then the evaluation's seed, images encoded and time."""
    from rich.console import Console

    from untwine.report.console import print_evaluation
    console = Console()
    print_evaluation(results, console, title="untwine evaluate")
    meta = results.get("_meta", {})
    seconds = meta.get("seconds", {})
    console.print(f"seed {meta.get('seed')}, encoded {meta.get('num_encoded', 0)} images, "
                  f"{seconds.get('total', sum(seconds.values())):.1f} s")


def _check_device(device: str | None) -> None:
    """A device torch can use here, or a DataError naming the ones it can."""
    if device is None:
        return
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DataError(f"--device {device!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index or 0) >= count:
            raise DataError(f"--device {device!r}: this machine has {count} CUDA device(s) for torch "
                            f"{torch.__version__}; use --device cpu" + (f" or cuda:0..{count - 1}" if count else ""))
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise DataError(f"--device {device!r}: untwine evaluates on cpu or cuda")


def _evaluate(args) -> int:
    from untwine.metrics.protocol import evaluate, evaluate_arrays

    path = Path(args.path)
    if path.is_dir():
        _check_device(args.device)  # before loading anything
        from untwine.train.run import load_run
        run = load_run(path)
        # the encoder's (mean, logvar): the mean is the code, the log-variance serves mig_sampling
        results = evaluate(run.model.representation, run.data, metrics=args.metrics, seed=args.seed,
                           batch_size=args.batch_size, device=args.device, posterior=run.model.encode,
                           progress=True)
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
    print_results(results)
    if args.out:
        atomic_write_bytes(args.out, (json.dumps(results, indent=2) + "\n").encode())
    return 0
