"""Study specs: a YAML file that names presets, a grid of overrides, seeds, datasets and metrics,
expanded into named runs.

    name: cpu-small
    overrides: {trainer.steps: 800, optim.lr: 1.0e-3}    # every run
    methods:
      betavae:
        preset: dsprites-betavae
        grid: {objective.beta: [1, 8]}                  # one run per combination (product)
      tcvae:
        preset: dsprites-betatcvae
        overrides: {objective.estimator: mss}          # this method's runs
        grid: {objective.beta: [2, 8]}
      tcvae-vae:                                        # stage 2: one run on every run of `tcvae`
        preset: ms-vae
        stage1: tcvae
    seeds: 3                                            # or a list [0, 1, 2]
    datasets: [dsprites]                                # default: each preset's own
                                                        # (a method may set its own seeds and datasets)
    metrics: fast                                       # trainer.eval_preset of every run
    resources: {cpus: 1, gpus: 0}                       # per run; a method may set its own
    udr: {num_points: 1000}                             # unsupervised model selection

A run is named `<method>-<grid values>-<dataset>-s<seed>` (a stage-2 run `<stage-1 run>--<method>
<grid values>`) and lives in DIR/runs/<name>. Every run's config is built and checked (keys, types,
objective and controller parameters) when the spec is read, before any run starts: a wrong entry is a
ConfigError naming it.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from untwine.errors import ConfigError

TOP_KEYS = ("name", "description", "overrides", "methods", "seeds", "datasets", "metrics", "resources", "udr")
METHOD_KEYS = ("preset", "overrides", "grid", "stage1", "resources", "datasets", "seeds")
RESOURCE_KEYS = ("cpus", "gpus")
UDR_KEYS = ("num_points", "correlation", "kl_threshold", "seed")
UDR_DEFAULTS = {"num_points": 1000, "correlation": "lasso", "kl_threshold": 0.01, "seed": 0}
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RunPlan:
    """One run of a study: what it trains (preset and overrides) and what it needs to start."""
    name: str
    method: str
    preset: str
    seed: int
    dataset: str | None                    # None: the preset's own (a stage-2 run: its stage 1's)
    setting: str                           # the name without the seed: runs that differ only in seed
    params: dict[str, Any]                 # the grid values of this run
    overrides: list[str]                   # what defines the run (section.key=value, JSON values)
    needs: list[str] = field(default_factory=list)   # stage-1 runs it trains on
    cpus: float = 1.0
    gpus: float = 0.0

    def config(self, study_dir: str | os.PathLike):
        """The run's Config: preset, overrides, its stage 1's directory, and the worker's threads."""
        from untwine.train.config import load_config
        extra = [f"stage1={json.dumps(str(run_dir(study_dir, n).resolve()))}" for n in self.needs]
        # one torch thread per CPU the run was given: oversubscribed cores run several times slower
        runtime = [f"trainer.threads={max(1, int(self.cpus))}", "trainer.progress=false",
                   f"run.name={json.dumps(self.name)}"]
        return load_config(self.preset, [*self.overrides, *extra, *runtime])


@dataclass
class Study:
    name: str
    description: str
    runs: list[RunPlan]
    udr: dict
    spec: dict                             # the spec as read (for DIR/study.yaml)

    @property
    def fingerprint(self) -> str:
        """What the study trains, hashed: the runs' names, presets and overrides (not resources, not
        comments): a study directory belongs to one fingerprint."""
        what = [(r.name, r.preset, r.overrides, r.needs) for r in self.runs]
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def run(self, name: str) -> RunPlan:
        return next(r for r in self.runs if r.name == name)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "fingerprint": self.fingerprint,
                "udr": self.udr, "runs": [asdict(r) for r in self.runs], "spec": self.spec}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Study":
        return cls(d["name"], d.get("description", ""), [RunPlan(**r) for r in d["runs"]],
                   dict(d.get("udr") or UDR_DEFAULTS), dict(d.get("spec") or {}))


def run_dir(study_dir: str | os.PathLike, name: str) -> Path:
    return Path(study_dir) / "runs" / name


# -- reading -----------------------------------------------------------------------------------
def _unknown(key: str, valid, where: str) -> ConfigError:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping (key: value); got {value!r} ({type(value).__name__})")
    return dict(value)


def _override_map(value, where: str) -> dict[str, Any]:
    """{section.key: value}; the spec's YAML may also nest one section level ({trainer: {steps: 5}})."""
    out = {}
    for key, v in _mapping(value, where).items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: override keys are section.key strings; got {key!r}")
        if "." not in key and isinstance(v, Mapping) and key not in ("stage1",):
            for sub, w in v.items():  # one level: {trainer: {eval_preset: {mig: {}}}} keeps its value whole
                out[f"{key}.{sub}"] = w
        else:
            out[key] = v
    return out


def _seeds(value, where: str) -> list[int]:
    if value is None:
        return [0]
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{where}: seeds={value}; give a count >= 1 or a list of integers")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: seeds {value} repeat a seed; each seed once")
        return list(value)
    raise ConfigError(f"{where}: seeds must be a count (3) or a non-empty list of integers ([0, 1, 2]); got {value!r}")


def _datasets(value, where: str) -> list[str | None]:
    if value is None:
        return [None]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{where}: datasets must be a name or a non-empty list of names; got {value!r}")
    from untwine.data.registry import available_datasets
    known = sorted(available_datasets())
    for n in names:
        if n.lower().replace("-", "_") not in known:
            close = difflib.get_close_matches(n, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown dataset {n!r}{hint}; the datasets are {', '.join(known)}")
    return list(names)


def _resources(value, base: dict, where: str) -> dict:
    res = dict(base)
    for key, v in _mapping(value, where).items():
        if key not in RESOURCE_KEYS:
            raise _unknown(key, RESOURCE_KEYS, where)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "cpus" and v <= 0):
            raise ConfigError(f"{where}.{key} must be a {'positive' if key == 'cpus' else 'non-negative'} number; "
                              f"got {v!r}")
        res[key] = float(v)
    return res


def _grid(value, where: str) -> list[dict[str, Any]]:
    grid = _override_map(value, where)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key} must be a non-empty list of values (one run each); got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] or [{}]


def _value_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ""))
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_") or "x"


def _param_label(point: dict[str, Any]) -> str:
    """'beta1' for {objective.beta: 1}; the last part of each key, unless two keys share it."""
    tails = [k.rsplit(".", 1)[-1] for k in point]
    labels = [(t if tails.count(t) == 1 else k.replace(".", "_")) for k, t in zip(point, tails)]
    return "-".join(f"{label}{_value_text(v)}" for label, v in zip(labels, point.values()))


def _as_overrides(values: Mapping[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def read_spec(source: str | os.PathLike | Mapping) -> dict:
    """The raw spec of a YAML file (or a dict), checked to be a mapping."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"study spec {str(path)!r} does not exist; give the path of a YAML study spec "
                          f"(see studies/ in the repository)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"study spec {str(path)!r} is not valid YAML ({e}); fix the syntax") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"study spec {str(path)!r} must hold a mapping (name:, methods:, seeds:, ...)")
    raw.setdefault("name", path.stem)
    return raw


def load_study(source: str | os.PathLike | Mapping) -> Study:
    """Read, expand and check a study spec: every run's config is built (keys, types, objective and
    controller parameters) before anything is trained; a wrong entry raises ConfigError naming it."""
    raw = read_spec(source)
    where = f"study {raw.get('name', '?')!r}"
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, where)
    name = str(raw.get("name") or "study")
    common = _override_map(raw.get("overrides"), f"{where} overrides")
    seeds = _seeds(raw.get("seeds"), where)
    datasets = _datasets(raw.get("datasets"), where)
    resources = _resources(raw.get("resources"), {"cpus": 1.0, "gpus": 0.0}, f"{where} resources")
    udr = dict(UDR_DEFAULTS)
    for key, v in _mapping(raw.get("udr"), f"{where} udr").items():
        if key not in UDR_KEYS:
            raise _unknown(key, UDR_KEYS, f"{where} udr")
        udr[key] = v
    _check_udr(udr, f"{where} udr")
    metrics = raw.get("metrics")
    if metrics is not None:
        common["trainer.eval_preset"] = metrics if isinstance(metrics, (str, dict)) else ",".join(map(str, metrics))
    methods = _mapping(raw.get("methods"), f"{where} methods")
    if not methods:
        raise ConfigError(f"{where}: no methods; add methods: {{NAME: {{preset: PRESET, grid: {{...}}}}}}")
    runs: list[RunPlan] = []
    by_method: dict[str, list[RunPlan]] = {}
    for method, entry in methods.items():  # in file order: a stage-2 method names an earlier one
        mwhere = f"{where} method {method!r}"
        if not isinstance(method, str) or not _NAME_OK.match(method):
            raise ConfigError(f"{mwhere}: a method name is letters, digits, '.', '_' or '-'")
        entry = _mapping(entry, mwhere)
        for key in entry:
            if key not in METHOD_KEYS:
                raise _unknown(key, METHOD_KEYS, mwhere)
        preset = entry.get("preset")
        if not isinstance(preset, str) or not preset:
            raise ConfigError(f"{mwhere}: needs preset: NAME (see `untwine presets`) or the path of a YAML config")
        own = {**common, **_override_map(entry.get("overrides"), f"{mwhere} overrides")}
        points = _grid(entry.get("grid"), f"{mwhere} grid")
        res = _resources(entry.get("resources"), resources, f"{mwhere} resources")
        stage1 = entry.get("stage1")
        if stage1 is None:
            mdatasets = _datasets(entry["datasets"], mwhere) if "datasets" in entry else datasets
            mseeds = _seeds(entry["seeds"], mwhere) if "seeds" in entry else seeds
            plans = [_plan(method, preset, own, point, seed, ds, res)
                     for ds in mdatasets for point in points for seed in mseeds]
        else:
            if stage1 not in by_method:
                raise ConfigError(f"{mwhere}: stage1: {stage1!r} is not a method defined above it; name one of "
                                  f"{list(by_method) or 'the earlier methods'}")
            for key in ("datasets", "seeds"):
                if key in entry:
                    raise ConfigError(f"{mwhere}: a stage-2 method takes its stage-1 runs' {key}; remove {key}:")
            plans = [_stage2_plan(method, preset, own, point, first, res)
                     for first in by_method[stage1] for point in points]
        by_method[method] = plans
        runs += plans
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        shown = ", ".join(twice[:5]) + (f" and {len(twice) - 5} more" if len(twice) > 5 else "")
        raise ConfigError(f"{where}: runs {shown} would share a directory (their grid values print alike); make "
                          f"the methods' names or grids differ")
    study = Study(name, str(raw.get("description") or ""), runs, udr, raw)
    check_study(study)
    return study


def _check_udr(udr: dict, where: str) -> None:
    from untwine.metrics.udr import CORRELATIONS
    n = udr["num_points"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ConfigError(f"{where}.num_points must be an integer >= 10; got {n!r}")
    if udr["correlation"] not in CORRELATIONS:
        raise ConfigError(f"{where}.correlation must be one of {list(CORRELATIONS)}; got {udr['correlation']!r}")
    if isinstance(udr["kl_threshold"], bool) or not isinstance(udr["kl_threshold"], (int, float)):
        raise ConfigError(f"{where}.kl_threshold must be a number; got {udr['kl_threshold']!r}")
    if isinstance(udr["seed"], bool) or not isinstance(udr["seed"], int):
        raise ConfigError(f"{where}.seed must be an integer; got {udr['seed']!r}")


def _plan(method, preset, own, point, seed, dataset, res) -> RunPlan:
    label = _param_label(point)
    setting = "-".join(p for p in (method, label, _value_text(dataset) if dataset else None) if p)
    values = {**own, **point, "trainer.seed": seed}
    if dataset:
        values["data.name"] = dataset
    return RunPlan(name=f"{setting}-s{seed}", method=method, preset=preset, seed=seed, dataset=dataset,
                   setting=setting, params=dict(point), overrides=_as_overrides(values),
                   cpus=res["cpus"], gpus=res["gpus"])


def _stage2_plan(method, preset, own, point, first: RunPlan, res) -> RunPlan:
    label = _param_label(point)
    suffix = "-".join(p for p in (method, label) if p)
    values = {**own, **point, "trainer.seed": first.seed}
    return RunPlan(name=f"{first.name}--{suffix}", method=method, preset=preset, seed=first.seed,
                   dataset=first.dataset, setting=f"{first.setting}--{suffix}", params={**first.params, **point},
                   overrides=_as_overrides(values), needs=[first.name], cpus=res["cpus"], gpus=res["gpus"])


def check_study(study: Study) -> None:
    """Build every run's config and its objective and controller, so that a wrong preset, key, type
    or parameter fails now, naming the run, instead of after hours of other runs."""
    from untwine.train.config import check_trainable
    from untwine.train.factory import build_controller_from, build_objective_from
    placeholder = Path(os.devnull)  # a stage-2 run's stage 1 does not exist yet
    checked: dict[tuple, None] = {}
    for plan in study.runs:
        key = (plan.preset, tuple(o for o in plan.overrides if not o.startswith("trainer.seed=")))
        if key in checked:
            continue  # seeds do not change what is checked
        try:
            cfg = plan.config(placeholder)
            check_trainable(cfg)
            build_objective_from(cfg, dataset_size=1000)
            build_controller_from(cfg)
        except ConfigError as e:
            raise ConfigError(f"study {study.name!r}, method {plan.method!r}, run {plan.name!r}: {e}") from None
        except (TypeError, ValueError) as e:  # a parameter of the wrong type reaching a constructor
            raise ConfigError(f"study {study.name!r}, method {plan.method!r}, run {plan.name!r}: "
                              f"{type(e).__name__}: {e}") from None
        checked[key] = None


__all__ = ["RunPlan", "Study", "check_study", "load_study", "read_spec", "run_dir"]
