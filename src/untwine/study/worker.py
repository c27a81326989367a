"""`python -m untwine.study.worker STUDY_DIR RUN RESULT_JSON`: one run of a study in its own
process (the local pool's worker). Exit 0: done; 1: failed (RUN/error.json says why); 75: the
run's lock is held by another process."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    study_dir, name, out = argv
    from untwine.io import atomic_write_bytes
    from untwine.study.executors import BUSY_EXIT
    from untwine.study.runs import execute_run
    from untwine.study.spec import Study
    study = Study.from_dict(json.loads((Path(study_dir) / "study.json").read_text()))
    result = execute_run(study_dir, study.run(name))
    atomic_write_bytes(out, json.dumps(result).encode())
    if result["status"] == "busy":
        return BUSY_EXIT
    if result["error"]:
        print(f"untwine study: run {name} failed: {result['error']}", file=sys.stderr)
    return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
