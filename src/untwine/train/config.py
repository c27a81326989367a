"""Typed training configs: YAML presets shipped in the package, files, and dotted overrides.

A config has fixed sections (data, model, objective, controller, optim, trainer, run). The
`objective` and `controller` sections are a `name` plus free parameters handed to the builders
(`objective.beta=4` sets the objective's `beta`); every other key is checked here, with a
close-match suggestion for typos and the expected type for wrong values.

    cfg = load_config("dsprites-dynamicvae", ["trainer.steps=3000", "objective.beta=4"])

A preset (or a config file) may name another preset under `base:`; its keys are merged over it.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from untwine.errors import ConfigError
from untwine.io import atomic_write_bytes

PRESET_PACKAGE = "untwine.configs"


@dataclass
class DataConfig:
    # a dataset name; "stage1" (multi-stage presets): the dataset of the stage-1 run
    name: str = "dsprites"
    path: str | None = None        # an original dataset file (.npz / .h5) instead of procedural rendering
    cache_dir: str | None = None   # where procedural datasets are cached (default: $UNTWINE_CACHE)
    # data.name=images: "grey" or "colour" (None: inferred from the files)
    channels: str | None = field(default=None, metadata={"choices": ("grey", "colour")})


@dataclass
class ModelConfig:
    arch: str = field(default="conv64", metadata={"choices": ("conv64", "mlp")})
    latent_dim: int = 10
    # "mixed": a table's (Gaussian on values, cross-entropy on one-hots), which the table data supply
    likelihood: str = field(default="bernoulli", metadata={"choices": ("bernoulli", "gaussian", "mixed")})
    hidden: list[int] | None = None  # mlp only: hidden widths (default 256, 256)


@dataclass
class ObjectiveConfig:
    name: str = "betavae"
    params: dict = field(default_factory=dict)  # handed to untwine.objectives.build_objective


@dataclass
class ControllerConfig:
    # "none": the objective's own KL weight (no controller)
    name: str = "none"
    params: dict = field(default_factory=dict)  # handed to untwine.control.build_controller


@dataclass
class BatchConfig:
    """What the objective's batches hold beyond single images (its `batch_kind`): weak pairs
    (Locatello et al. 2020) or groups sharing content factors (ML-VAE). optim.batch_size stays the
    number of images per step: batch_size // 2 pairs, batch_size // group_size groups."""
    k: int = 1                                  # pairs: factors changed; -1 draws k from 1..K-1
    mode: str = field(default="locatello", metadata={"choices": ("locatello", "guaranteed")})
    group_size: int = 4                         # groups: members per group
    shared_factors: list[str] | None = None     # groups: the content factors (names)
    # groups: hold this share of the content combinations out of training (the unseen groups that
    # untwine.metrics.content_style scores), drawn with holdout_seed
    holdout_fraction: float = 0.0
    holdout_seed: int = 0


@dataclass
class Stage1Config:
    """Multi-stage runs: the frozen stage-1 run that stage 2 builds on (`stage1=RUN_DIR`)."""
    run: str | None = None
    sample: bool = False       # stage 2 sees a sample of q(z|x) instead of the encoder mean
    # weight of the code-consistency term (vae, gan): the frozen stage-1 encoder must read z back
    # from stage-2 images drawn with w ~ p(w), so that w cannot move the factors stage 1 encodes
    consistency: float = 0.0


@dataclass
class Stage2Config:
    # "none" (an ordinary run) or a stage-2 variant: vae, gan, flow, gmm (untwine.multistage)
    name: str = "none"
    params: dict = field(default_factory=dict)  # handed to untwine.multistage.build_stage2


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 64
    # FactorVAE's discriminator (disentanglement_lib: Adam 1e-4, betas 0.5/0.9)
    aux_lr: float = 1e-4
    aux_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])


@dataclass
class TrainerConfig:
    steps: int = 10_000
    seed: int = 0
    accelerator: str = field(default="cpu", metadata={"choices": ("cpu", "gpu", "cuda", "mps", "auto")})
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    # "auto": the fastest honest setting of the device (bf16-mixed on a CPU with native bf16 or a
    # GPU that has it, else 32-true on a CPU and 16-mixed on a GPU)
    precision: str = field(default="32-true", metadata={"choices": (
        "auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine")})
    channels_last: bool = False
    compile: bool = False
    log_every: int = 100
    ckpt_every: int = 1000
    eval_every: int = 0            # 0: evaluate only at the end
    # metrics: a preset (fast, standard, full), names "mig,dci", {metric: {param: value}}, or none
    eval_preset: str | dict = "fast"
    eval_batch_size: int | None = None   # None: 64 on a CPU, 512 on a GPU (metrics.protocol.default_encode_batch_size)
    pictures: bool = True
    # multi-stage runs, at the end: "full" (reconstruction, samples, factor fidelity, w-invariance;
    # the first run on a dataset trains untwine's factor classifier, minutes on a CPU, then cached),
    # "reconstruction" (BCE/MSE/PSNR/SSIM/ELBO of both stages only) or "none"
    multistage_eval: str = field(default="full", metadata={"choices": ("full", "reconstruction", "none")})
    report: bool = True            # write RUN/report.html at the end (untwine.report)
    progress: bool = True          # the live rich progress bar
    # CPU threads for torch: None keeps torch's default (one per core); "auto" uses the cores left
    # free by the current load, since an oversubscribed CPU runs several times slower
    threads: int | str | None = None
    max_seconds: float | None = None  # stop training after this many seconds (the demo's budget)


@dataclass
class RunConfig:
    dir: str | None = None         # default: runs/<name>-<UTC time>
    name: str | None = None        # default: the preset's or file's name


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return config_to_dict(self)


# sections whose keys other than `name` are free parameters
_NAMED_SECTIONS = ("objective", "controller", "stage2")
# top-level shorthands for one key: `stage1=RUN_DIR` is `stage1.run=RUN_DIR`
_SHORTHANDS = {"stage1": ["stage1", "run"]}


# -- presets -------------------------------------------------------------------
def list_presets() -> list[str]:
    """Names of the YAML presets shipped in untwine/configs."""
    root = resources.files(PRESET_PACKAGE)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """The `description:` line of a preset's own file ("" when it has none)."""
    if name not in list_presets():
        _load_raw(name)  # the unknown-preset error, with its suggestions
        raise ConfigError(f"{name!r} is a config file, not a preset; its presets are listed by `untwine presets`")
    raw = _read_yaml_text((resources.files(PRESET_PACKAGE) / f"{name}.yaml").read_text(), f"preset {name!r}")
    return " ".join(str(raw.get("description") or "").split())


def _read_yaml_text(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin} is not valid YAML: {e}; fix the syntax") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must hold a mapping of sections (data:, model:, ...); got {type(data).__name__}")
    return data


def _load_raw(source: str | os.PathLike, _seen: tuple[str, ...] = ()) -> dict:
    """The raw dict of a preset name or YAML file, with `base:` chains merged."""
    src = str(source)
    if src.endswith((".yaml", ".yml")) or os.sep in src or Path(src).is_file():
        path = Path(src)
        if not path.is_file():
            raise ConfigError(f"config file {src!r} does not exist; give a preset name ({', '.join(list_presets())}) "
                              f"or the path of a YAML file")
        raw = _read_yaml_text(path.read_text(), f"config file {src!r}")
    else:
        names = list_presets()
        if src not in names:
            close = difflib.get_close_matches(src, names, n=3)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ConfigError(f"unknown preset {src!r}{hint}; the presets are: {', '.join(names)}; "
                              f"or give the path of a YAML file")
        raw = _read_yaml_text((resources.files(PRESET_PACKAGE) / f"{src}.yaml").read_text(), f"preset {src!r}")
    raw.pop("description", None)  # for people (`untwine presets`), not a setting; never inherited
    base = raw.pop("base", None)
    if base is None:
        return raw
    if src in _seen:
        raise ConfigError(f"config {src!r} extends itself through 'base:' ({' -> '.join(_seen + (src,))}); break the cycle")
    return _merge(_load_raw(base, _seen + (src,)), raw)


def _merge(base: dict, over: Mapping) -> dict:
    """Deep merge; a section that names a different objective or controller replaces the base's
    (a FactorVAE preset on a beta-VAE base must not inherit `beta`)."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        renamed = isinstance(v, Mapping) and isinstance(old, Mapping) and "name" in v and v["name"] != old.get("name")
        out[k] = _merge(old, v) if isinstance(v, Mapping) and isinstance(old, Mapping) and not renamed else v
    return out


# -- overrides -----------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """'trainer.steps=3000' -> (['trainer', 'steps'], 3000); the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if sep and key in _SHORTHANDS:
        return list(_SHORTHANDS[key]), _number_from_string(yaml.safe_load(value) if value.strip() else None)
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. trainer.steps=3000)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value {value!r} is not valid YAML ({e})") from e
    return key.split("."), _number_from_string(parsed)


def _number_from_string(value: Any) -> Any:
    # YAML 1.1 reads '1e-4' as a string; users mean a number
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") or value.lower() in ("inf", "-inf", "nan") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply dotted overrides; `objective.name=X` (or controller) with a new name first drops the
    old section's parameters, so `objective.name=factorvae objective.gamma=10` works in any order."""
    out = _merge({}, raw)
    parsed = [(text, *parse_override(text)) for text in overrides]
    for text, path, value in parsed:
        if len(path) == 2 and path[0] in _NAMED_SECTIONS and path[1] == "name":
            old = out.get(path[0])
            if not isinstance(old, dict) or old.get("name") != value:
                out[path[0]] = {"name": value}
    for text, path, value in parsed:
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


# -- typed conversion ---------------------------------------------------------
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _coerce(value: Any, tp: Any, key: str, choices: Sequence[str] | None = None) -> Any:
    """Check `value` against annotation `tp`; return it converted (int -> float, list -> list of float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, choices)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r} expects {_type_name(tp)}; got {value!r} ({type(value).__name__})")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list of {_type_name(item_tp)}; got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping; got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 3e3 -> 3000
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            converted = _number_from_string(value)
            if isinstance(converted, (int, float)):
                return float(converted)
    elif tp is str:
        if isinstance(value, str):
            if choices and value not in choices:
                raise ConfigError(f"config key {key!r} must be one of {list(choices)}; got {value!r}")
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"config key {key!r} expects {_type_name(tp)}; got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, valid: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    section = where.rstrip(".")
    return ConfigError(f"unknown config key {where + key!r}.{hint} Valid "
                       f"{'keys of section ' + repr(section) if section else 'sections'}: {', '.join(valid)}")


def config_from_dict(raw: Mapping) -> Config:
    """Build a validated Config from nested dicts (missing keys take their defaults)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections; got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    built = {}
    for sec_name, sec_raw in raw.items():
        if sec_name not in sections:
            raise _unknown_key(sec_name, list(sections), "")
        if sec_raw is None:
            sec_raw = {}
        if not isinstance(sec_raw, Mapping):
            raise ConfigError(f"config section {sec_name!r} must be a mapping of keys; got {sec_raw!r}")
        cls = sections[sec_name].default_factory
        if sec_name in _NAMED_SECTIONS:
            sec_raw = dict(sec_raw)
            params = dict(sec_raw.pop("params", None) or {})
            name = sec_raw.pop("name", cls().name)
            if not isinstance(name, str):
                raise ConfigError(f"config key '{sec_name}.name' expects str; got {name!r}")
            params.update(sec_raw)
            built[sec_name] = cls(name=name, params={k: _number_from_string(v) for k, v in params.items()})
            continue
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in sec_raw.items():
            if key not in fields:
                raise _unknown_key(key, list(fields), f"{sec_name}.")
            kwargs[key] = _coerce(value, hints[key], f"{sec_name}.{key}", fields[key].metadata.get("choices"))
        built[sec_name] = cls(**kwargs)
    cfg = Config(**built)
    _check_values(cfg)
    return cfg


def _check_values(cfg: Config) -> None:
    positive = {"model.latent_dim": cfg.model.latent_dim, "optim.batch_size": cfg.optim.batch_size,
                "trainer.log_every": cfg.trainer.log_every, "trainer.ckpt_every": cfg.trainer.ckpt_every,
                "trainer.num_nodes": cfg.trainer.num_nodes, "trainer.eval_batch_size": cfg.trainer.eval_batch_size}
    for key, v in positive.items():
        if v is not None and v < 1:   # eval_batch_size None: the device's default
            raise ConfigError(f"config key {key!r} must be at least 1; got {v}")
    for key, v in {"trainer.steps": cfg.trainer.steps, "trainer.eval_every": cfg.trainer.eval_every}.items():
        if v < 0:
            raise ConfigError(f"config key {key!r} must be 0 or more; got {v}")
    th = cfg.trainer.threads
    if th is not None and (th != "auto" if isinstance(th, str) else th < 1):
        raise ConfigError(f"config key 'trainer.threads' must be a positive integer, 'auto' or null; got {th!r}")
    if cfg.trainer.max_seconds is not None and cfg.trainer.max_seconds <= 0:
        raise ConfigError(f"config key 'trainer.max_seconds' must be positive or null; got {cfg.trainer.max_seconds}")
    if not 0.0 <= cfg.batch.holdout_fraction < 1.0:
        raise ConfigError(f"config key 'batch.holdout_fraction' must be in [0, 1); got {cfg.batch.holdout_fraction}")
    if cfg.batch.group_size < 1:
        raise ConfigError(f"config key 'batch.group_size' must be at least 1; got {cfg.batch.group_size}")
    if cfg.stage1.run and cfg.stage2.name == "none":
        raise ConfigError(f"stage1.run={cfg.stage1.run!r} is set but no stage-2 variant: set stage2.name to one "
                          f"of vae, gan, flow, gmm (or use the ms-vae, ms-gan, ms-flow, ms-gmm presets)")
    if cfg.optim.lr <= 0 or cfg.optim.aux_lr <= 0:
        raise ConfigError(f"learning rates must be positive; got optim.lr={cfg.optim.lr}, optim.aux_lr={cfg.optim.aux_lr}")
    for key in ("betas", "aux_betas"):
        b = getattr(cfg.optim, key)
        if len(b) != 2 or not all(0 <= x < 1 for x in b):
            raise ConfigError(f"config key 'optim.{key}' must be two numbers in [0, 1) (Adam's betas); got {b}")


def check_trainable(cfg: Config) -> None:
    """What a config needs before a run starts, beyond valid keys (a preset may load without it,
    to be shown or completed): a multi-stage config names its frozen stage 1."""
    if not cfg.stage1.run and (cfg.data.name == "stage1" or cfg.stage2.name != "none"):
        raise ConfigError(f"a multi-stage run (stage2.name={cfg.stage2.name!r}) needs its frozen stage 1: add "
                          f"stage1=RUN_DIR, the directory of a finished single-stage run, e.g. "
                          f"`untwine train {cfg.run.name or 'ms-vae'} stage1=runs/tcvae`")


def config_to_dict(cfg: Config) -> dict:
    """Nested plain dict (objective/controller params flattened beside `name`), ready for YAML."""
    out = {}
    for f in dataclasses.fields(cfg):
        sec = getattr(cfg, f.name)
        if f.name in _NAMED_SECTIONS:
            out[f.name] = {"name": sec.name, **sec.params}
        else:
            out[f.name] = dataclasses.asdict(sec)
    return out


def load_config(source: "str | os.PathLike | Mapping | Config" = "dsprites-betavae",
                overrides: Sequence[str] = ()) -> Config:
    """A preset name, a YAML path, a dict or a Config, with dotted overrides applied."""
    if isinstance(source, Config):
        raw = config_to_dict(source)
    elif isinstance(source, Mapping):
        raw = dict(source)
        if "base" in raw:
            base = raw.pop("base")
            raw = _merge(_load_raw(base), raw)
    else:
        raw = _load_raw(source)
        raw.setdefault("run", {})
        if not isinstance(raw["run"], dict):
            raise ConfigError(f"config section 'run' must be a mapping; got {raw['run']!r}")
        raw["run"].setdefault("name", Path(str(source)).stem)
    return config_from_dict(apply_overrides(raw, overrides))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_bytes(Path(path), dump_config(cfg).encode())
