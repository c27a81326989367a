"""Studies (issue 26): a tiny study (2 presets x 2 seeds x 20 steps) through the local pool and a
real local Ray instance gives the same table; re-running trains nothing; a killed run resumes;
a failed run is recorded while the rest go on; bad specs fail before any run starts."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from untwine.errors import ConfigError
from untwine.study.orchestrate import claim, run_study
from untwine.study.runs import RunLock, execute_run, run_state
from untwine.study.spec import load_study, run_dir
from untwine.study.table import study_table, write_table

TINY = {
    "name": "tiny",
    "overrides": {"model.arch": "mlp", "model.hidden": [16], "model.latent_dim": 4, "optim.batch_size": 8,
                  "optim.lr": 1.0e-3, "trainer.steps": 20, "trainer.log_every": 10, "trainer.ckpt_every": 10,
                  "trainer.pictures": False, "trainer.report": False},
    "metrics": {"mig": {"num_train": 300}, "factor_r2": {"num_train": 300, "num_test": 100}},
    "methods": {
        "betavae": {"preset": "dsprites-betavae"},
        "tcvae": {"preset": "dsprites-betatcvae"},
        # fails when its worker builds the data (no such file): recorded, the rest go on
        "broken": {"preset": "dsprites-betavae", "overrides": {"data.path": "/nonexistent/dsprites.npz"},
                   "seeds": [1]},
        # stage 2 on the broken runs: never started, recorded as failed with the reason
        "broken-vae": {"preset": "ms-vae", "stage1": "broken"},
    },
    "seeds": 2,
    "udr": {"num_points": 100},
}
GOOD = ["betavae-s0", "betavae-s1", "tcvae-s0", "tcvae-s1"]
FAILED = ["broken-s1", "broken-s1--broken-vae"]
# what a run's training and evaluation produce (times and speeds differ from one execution to the next)
VALUES = ["run", "status", "steps", "seed", "model.latent_dim", "mig", "factor_r2", "recon_eval", "udr", "udr_spearman"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNTWINE_CACHE", str(path))  # the workers inherit it: never the user's cache
        yield path


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("study") / "local"
    result = run_study(copy.deepcopy(TINY), out, workers=2, quiet=True)
    return out, result


def checkpoint_mtimes(study_dir) -> dict[str, float]:
    return {p.parent.parent.parent.name: p.stat().st_mtime_ns
            for p in Path(study_dir, "runs").glob("*/checkpoints/last/state.json")}


def test_local_pool_trains_every_run_and_records_the_failures(local_study):
    out, result = local_study
    by_name = {r["name"]: r for r in result["results"]}
    assert sorted(by_name) == sorted(GOOD + FAILED)
    assert all(by_name[n]["status"] == "done" and by_name[n]["trained"] for n in GOOD)
    assert all(by_name[n]["status"] == "failed" for n in FAILED)
    err = json.loads((run_dir(out, "broken-s1") / "error.json").read_text())
    assert "nonexistent" in err["error"] and "Traceback" in err["traceback"]
    dep = json.loads((run_dir(out, "broken-s1--broken-vae") / "error.json").read_text())
    assert dep["kind"] == "dependency" and "broken-s1" in dep["error"]
    assert not (run_dir(out, "broken-s1--broken-vae") / "config.yaml").exists()   # never started


def test_table_has_a_row_per_run_with_parameters_metrics_times_and_udr(local_study):
    out, _ = local_study
    csv_path, parquet_path = write_table(out)
    frame = pd.read_csv(csv_path)
    assert list(frame["run"]) == GOOD + FAILED          # the spec's order
    pq = pd.read_parquet(parquet_path)
    assert list(pq.columns) == list(frame.columns) and len(pq) == 6
    done = frame[frame["status"] == "done"].set_index("run")
    assert sorted(done.index) == sorted(GOOD)
    assert (done["steps"] == 20).all() and (done["train_seconds"] > 0).all() and (done["images_per_second"] > 0).all()
    assert set(done["seed"]) == {0, 1}
    assert (frame["model.latent_dim"] == 4).all() and (frame["optim.lr"] == 1e-3).all()   # resolved overrides
    assert done[["mig", "factor_r2", "factor_r2.factor_r2_single", "recon_eval"]].notna().all().all()
    # UDR within each setting (its two seeds): Lasso is asymmetric (each seed's score is its pair's
    # regression into it), Spearman symmetric (both seeds share the pair's one score)
    assert done["udr"].between(0, 1).all() and done["udr_spearman"].between(0, 1).all()
    assert done.loc["betavae-s0", "udr_spearman"] == done.loc["betavae-s1", "udr_spearman"]
    failed = frame[frame["status"] == "failed"]
    assert failed["error"].str.len().gt(0).all() and failed["mig"].isna().all()
    assert frame.loc[frame["run"] == "broken-s1--broken-vae", "stage1"].item() == "broken-s1"


def test_rerunning_trains_nothing(local_study, cache):
    out, _ = local_study
    before = checkpoint_mtimes(out)
    again = run_study(copy.deepcopy(TINY), out, quiet=True)
    assert again["counts"]["trained"] == 0 and sorted(again["skipped"]) == sorted(GOOD)
    assert {r["name"] for r in again["results"]} == set(FAILED)      # failed runs are tried again
    assert checkpoint_mtimes(out) == before


def test_ray_executor_gives_the_same_table(local_study, tmp_path, cache):
    ray = pytest.importorskip("ray")
    out, _ = local_study
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_study(copy.deepcopy(TINY), tmp_path / "ray", executor="ray", quiet=True)
    finally:
        ray.shutdown()
    assert result["counts"]["trained"] == 4 and result["counts"]["failed"] == 2
    local = study_table(out).set_index("run").sort_index()
    remote = study_table(tmp_path / "ray").set_index("run").sort_index()
    cols = [c for c in VALUES if c != "run"]
    pd.testing.assert_frame_equal(local[cols], remote[cols])
    assert remote.loc["tcvae-s1", "mig"] == local.loc["tcvae-s1", "mig"] and np.isfinite(remote.loc["tcvae-s1", "mig"])


def test_a_run_killed_mid_run_resumes_from_its_checkpoint(local_study, tmp_path, cache):
    """A run directory with a checkpoint at step 10 of 20 and no summary (its process was killed):
    the study continues it and reaches what the uninterrupted run of the local study reached."""
    from untwine.train import load_config, train
    out, _ = local_study
    study = load_study(copy.deepcopy(TINY))
    claim(study, tmp_path)
    plan = study.run("tcvae-s1")
    path = run_dir(tmp_path, plan.name)
    train(load_config(plan.config(tmp_path), ["trainer.steps=10"]), run_dir=path)
    for name in ("summary.json", "metrics.json"):
        (path / name).unlink()
    assert run_state(tmp_path, plan) == "unfinished"
    result = execute_run(tmp_path, plan)
    assert result["status"] == "done" and result["trained"]
    summary = json.loads((path / "summary.json").read_text())
    assert summary["start_step"] == 10 and summary["steps"] == 20
    ours = json.loads((path / "metrics.json").read_text())
    uninterrupted = json.loads((run_dir(out, plan.name) / "metrics.json").read_text())
    assert ours["mig"] == uninterrupted["mig"] and ours["factor_r2"] == uninterrupted["factor_r2"]
    assert execute_run(tmp_path, plan)["trained"] is False   # and now it is done


def test_a_locked_run_is_not_trained_twice(tmp_path, cache):
    study = load_study(copy.deepcopy(TINY))
    claim(study, tmp_path)
    plan = study.run("betavae-s0")
    with RunLock(tmp_path, plan.name) as lock:
        assert lock.acquire()
        assert run_state(tmp_path, plan) == "running"
        assert execute_run(tmp_path, plan)["status"] == "busy"
    assert not run_dir(tmp_path, plan.name).exists()
    assert run_state(tmp_path, plan) == "pending"


def test_a_directory_of_another_spec_is_refused_unless_forced(local_study, tmp_path):
    out, _ = local_study
    other = copy.deepcopy(TINY)
    other["overrides"]["trainer.steps"] = 30
    with pytest.raises(ConfigError, match="different spec"):
        run_study(other, out, quiet=True)
    claim(load_study(copy.deepcopy(TINY)), tmp_path)
    claim(load_study(other), tmp_path, force=True)
    assert json.loads((tmp_path / "study.json").read_text())["fingerprint"] == load_study(other).fingerprint


def _bad(**changes):
    spec = copy.deepcopy(TINY)
    for path, value in changes.items():
        node = spec
        *parents, last = path.split("/")
        for p in parents:
            node = node[p]
        node[last] = value
    return spec


@pytest.mark.parametrize("changes, message", [
    ({"methods/betavae/preset": "dsprites-betavea"}, r"method 'betavae'.*unknown preset 'dsprites-betavea'.*did you mean"),
    ({"methods/tcvae/grid": {"objective.beta": [2, "lots"]}}, r"run 'tcvae-betalots-s0'.*beta='lots'"),
    ({"methods/tcvae/grid": {"trainer.stpes": [5]}}, r"method 'tcvae'.*unknown config key 'trainer.stpes'.*'steps'"),
    ({"methods/tcvae/overrides": {"trainer.steps": "many"}}, r"method 'tcvae'.*'trainer.steps' expects int"),
    ({"methods/tcvae/overrides": {"objective.gama": 3}}, r"method 'tcvae'.*unknown parameter.*gama"),
    ({"methods/tcvae/grids": {}}, r"method 'tcvae': unknown key 'grids' \(did you mean 'grid'\?\)"),
    ({"seed": 3}, r"unknown key 'seed' \(did you mean 'seeds'\?\)"),
    ({"seeds": [0, 0]}, r"repeat a seed"),
    ({"seeds": "three"}, r"seeds must be a count"),
    ({"datasets": ["dsprite"]}, r"unknown dataset 'dsprite' \(did you mean 'dsprites'\?\)"),
    ({"methods/broken-vae/stage1": "nope"}, r"method 'broken-vae': stage1: 'nope' is not a method defined above"),
    ({"methods/broken-vae/seeds": 2}, r"method 'broken-vae': a stage-2 method takes its stage-1 runs' seeds"),
    ({"methods/tcvae/grid": {"objective.beta": 3}}, r"grid.objective.beta must be a non-empty list"),
    ({"resources": {"cpus": 0}}, r"resources.cpus must be a positive number"),
    ({"udr": {"correlation": "pearson"}}, r"udr.correlation must be one of"),
])
def test_spec_errors_fail_before_any_run_starts_and_name_the_entry(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        run_study(_bad(**changes), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_spec_expansion_names_runs_and_stage2_dependencies():
    spec = copy.deepcopy(TINY)
    spec["methods"]["tcvae"]["grid"] = {"objective.beta": [2, 1.0e-1], "model.latent_dim": [4]}
    spec["datasets"] = ["dsprites"]
    study = load_study(spec)
    names = [r.name for r in study.runs]
    assert "tcvae-beta2-latent_dim4-dsprites-s1" in names and "tcvae-beta0.1-latent_dim4-dsprites-s0" in names
    stage2 = study.run("broken-dsprites-s1--broken-vae")
    assert stage2.needs == ["broken-dsprites-s1"] and stage2.seed == 1
    assert study.run("tcvae-beta2-latent_dim4-dsprites-s0").setting == "tcvae-beta2-latent_dim4-dsprites"
    assert len(names) == 2 * 1 + 2 * 2 + 1 + 1             # broken has its own seeds: [1]


def test_an_unreachable_ray_address_says_so():
    pytest.importorskip("ray")
    from untwine.study.executors import make_executor
    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at '127.0.0.1:9'"):
        make_executor("ray", address="127.0.0.1:9").connect()
    with pytest.raises(ConfigError, match="--address is for --executor ray"):
        make_executor("local", address="127.0.0.1:9")


def test_untwine_study_table_and_report_commands(local_study, capsys):
    from untwine.cli import main
    out, _ = local_study
    assert main(["study", "table", str(out)]) == 0
    assert main(["study", "report", str(out)]) == 0
    page = (out / "study.html").read_text()
    for section in ("medians over seeds", "distribution over seeds", "reconstruction against disentanglement",
                    "do the metrics agree?", "settings ranked by median UDR", "failed runs", "nonexistent"):
        assert section in page, section
    assert page.count("data:image/png;base64,") == 3 and "http://" not in page and "https://" not in page
    assert sorted(os.listdir(out / "plots")) == ["distributions.png", "rank_correlation.png", "tradeoff.png"]
    assert main(["study", "table", str(out / "runs")]) == 2
    assert "not a study directory" in capsys.readouterr().err


def test_killing_a_study_mid_run_and_rerunning_resumes_the_run(tmp_path, cache):
    """The issue's case as it happens: `untwine study run` is killed (SIGKILL, the whole process
    group: no handler runs) once its run has checkpointed; the same command again continues the run
    from that checkpoint, to its end."""
    import signal
    import subprocess
    import sys
    import time
    import yaml
    spec = {"name": "killed", "methods": {"betavae": {"preset": "dsprites-betavae"}}, "seeds": 1,
            "metrics": {"mig": {"num_train": 200}},
            "overrides": {**TINY["overrides"], "trainer.steps": 3000, "trainer.ckpt_every": 20,
                          "trainer.log_every": 20}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "study"
    command = [sys.executable, "-m", "untwine.cli", "study", "run", str(tmp_path / "spec.yaml"), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = out / "runs" / "betavae-s0" / "checkpoints" / "last" / "state.json"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (state.is_file() and json.loads(state.read_text())["step"] >= 40):
            time.sleep(0.5)
        assert state.is_file(), "the run never checkpointed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 40 <= killed_at < 3000 and not (state.parents[2] / "summary.json").exists()
    # the same command again: the run continues from its checkpoint, not from step 0
    assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0
    summary = json.loads((state.parents[2] / "summary.json").read_text())
    assert summary["start_step"] >= killed_at and summary["steps"] == 3000


def test_udr_reads_an_image_sets_held_out_images(tmp_path, cache):
    """A study on your own images (no factor grid) compares its runs on images no run trained on."""
    from test_images import write_folder
    from untwine.data.registry import get_dataset
    from untwine.data.split import dataset_split
    from untwine.study.selection import _images
    data = get_dataset("images", path=str(write_folder(tmp_path / "pngs", 300)))
    held_out = set(dataset_split(data).eval_indices.tolist())
    chosen = _images(data, num_points=20, seed=0)
    assert len(chosen) == 20 and set(chosen.tolist()) <= held_out
