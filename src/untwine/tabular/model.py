"""The tabular multi-stage model: a disentangling VAE on transformed rows, then the detail it misses.

    model = TabularMultiStage(latent_dim=8).fit(df, target="income", work_dir="model_dir")
    synthetic = model.sample(len(df), seed=0)
    rare = model.sample(100, seed=0, conditions={"job": "pilot"})   # exactly 100 rows, all pilots
    model.save("model_dir"); model = TabularMultiStage.load("model_dir")
    model.fit(df, target="income", work_dir="model_dir", resume=True)  # continue an interrupted fit

Both stages train through the library's engine (`untwine.train.train(cfg, data=TableData(...))`),
as the table tasks registered in untwine.train.factory (untwine.train.tasks.table): uniform index
batches, checkpoints, exact resume, the NaN guard and signals as for every run. Each stage is a run
of its own in the fit's directory (stage1_run/, stage2_run/), trained up to its budget in stretches
between validation checks (early stopping, untwine.tabular.budget), so an interrupted fit resumes
to the weights of an uninterrupted one.
Stage 1: a beta-TCVAE (any objective/controller of the library: `objective`, `objective_params`,
`controller`) with an MLP encoder/decoder and the mixed likelihood (the table data supply it; no
disentanglement metrics: the task scores the validation rows).
Stage 2: a conditional mixture of factor analysers (untwine.multistage.mixture) on the residual
r = x - y of the transformed row x given stage 1's decoded row y = E[x | z] (z the encoder mean),
with mixing weights from z: p(x | z) = sum_k pi_k(z) N(x; y(z) + mu_k, L_k L_k^T + diag psi_k),
Adam on the exact negative log-likelihood per feature (MixtureNLL) on rows [r | z].
Stage 2 never touches stage 1 (frozen), so stage 1's latents stay the representation.
Sampling (the default, discrete="stage1"): z ~ N(0, I); the discrete coordinates D (every one-hot
span: categories, the modes of continuous columns, missing indicators) from stage 1's categorical
p1(x_D | z), exactly as stage 1 alone; then the continuous coordinates A (the alphas) from stage 2's
exact conditional p2(r_A | r_D, z) of the mixture given the residual r_D = x_D - y_D of the drawn
categories, x_A = y_A + r_A. So p(x | z) = p1(x_D | z) p2(x_A | x_D, z): stage 2 adds the detail of
the continuous values given the categories and modes actually drawn. The earlier reading
(discrete="residual": the whole row as y + r with r ~ p2(r | z), arg max per span) spread mass onto
rare categories on Adult (race's column shape 0.998 for stage 1 alone, 0.901) and is kept for
comparison. The transformer reads rows back (alpha clipped).

Where z comes from when sampling (`code_prior`): "normal" draws the VAE's prior N(0, I); "mixture"
draws a full-covariance Gaussian mixture (`prior_components`) fitted after stage 1 to the aggregate
posterior q(z) = mean_i q(z | x_i), one draw per training row (ex-post density estimation, Ghosh et
al. 2020). A VAE's codes do not fill N(0, I) evenly (the two-stage VAE's argument, Dai & Wipf 2019),
and a z from a hole decodes to a mean-like row; the mixture keeps z where stage 1 put the data. It
changes no weight of either stage, so the representation and the factors are stage 1's.

Conditional sampling, exact under the model and without rejection: the condition fixes some
coordinates C of x (the column's spans and its missing indicator). (1) Sampling-importance-
resampling: draw M = `oversample` * n candidates (z from the sampling prior and the free discrete coordinates
from p1(x_D | z)) and resample n of them with weights p1(x_{C,D} | z) * p2(r_{C,A} | r_D, z) (the
stage-1 probability of the fixed categories times the mixture's closed-form conditional density of
the fixed alphas); so the candidates follow the model's conditional as M grows, and a rare
condition only lowers the effective sample size, never the row count. (2) Given them:
k ~ p(k | r_known, z) and the factor w ~ p(w | r_known, k) (Gaussian, closed form), then the free
coordinates r_R = mu_kR + L_kR w + noise. (3) The coordinates C hold the condition's values, so
every row meets it exactly. (discrete="residual" weights z by the mixture's marginal p2(x_C | z).)
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from untwine.errors import CheckpointError, ConfigError, DataError
from untwine.io import atomic_write_bytes
from untwine.tabular import budget
from untwine.tabular.likelihood import MixedLikelihood
from untwine.tabular.transformer import TableTransformer

FORMAT_VERSION = 1
CODE_PRIORS = ("normal", "mixture")
PRIOR_FIT_ROWS = 50_000   # rows of q(z) the code prior's EM sees (KDD's 199,523 would cost 4x for nothing)
PRIVACY_WARNING = 0.55   # a fit warns when its synthetic rows are nearer its training rows than this share
PRIVACY_ROWS = 2000      # held-out rows at most (and synthetic rows) of the fit's own privacy check
ESS_WARNING = 0.5   # conditional sampling warns when the effective sample size is below this share of the rows
MIN_ROWS = 10       # fewer rows cannot be fitted (two rows crashed deep in stage 1: issue 25)
STAGE1_RUN, STAGE2_RUN = "stage1_run", "stage2_run"   # the engine's runs inside a fit's directory
FIT_STATE = "fit.state.json"   # what a fit started with: the table's fingerprint and the parameters
STAGE2_OBJECTIVE = "table-mixture"   # the engine's name of a table's stage 2 (untwine.train.tasks.table)


class TableData:
    """Transformed rows as the engine's table-data contract: __len__, batch(indices, device),
    image_shape = (F,), the `likelihood` module, factor_space = None; `validation`: rows no step
    draws, which the table tasks score (early stopping), or None."""

    factor_space = None

    def __init__(self, rows: np.ndarray, likelihood: torch.nn.Module | None = None,
                 validation: np.ndarray | None = None):
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or len(rows) == 0:
            raise DataError(f"TableData needs a non-empty (rows, features) array, got shape {rows.shape}")
        self.rows = torch.from_numpy(rows)
        self.image_shape = (rows.shape[1],)
        self.likelihood = likelihood
        self.validation = None if validation is None or len(validation) == 0 else \
            torch.from_numpy(np.asarray(validation, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray, device=None) -> torch.Tensor:
        out = self.rows[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        return out.to(device) if device is not None else out


@torch.no_grad()
def stage1_validation_loss(vae, rows: torch.Tensor) -> float:
    """Mean over `rows` of the negative evidence bound at the posterior mean, NLL(x | decode(mu)) +
    KL(q(z | x) || N(0, I)): deterministic, and it rises once stage 1 memorises its training rows."""
    total = 0.0
    for i in range(0, len(rows), 4096):
        x = rows[i:i + 4096]
        mu, logvar = vae.encode(x)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)
        total += float((vae.likelihood.nll(vae.decode(mu), x) + kl).sum())
    return total / len(rows)


class MixtureNLL(torch.nn.Module):
    """Stage 2 and its loss as one module (what the engine's Fabric wraps): the mean negative
    log-likelihood per feature of residuals given codes, on rows [r | z] (z: the last context_dim)."""

    def __init__(self, mixture: torch.nn.Module, context_dim: int):
        super().__init__()
        self.mixture, self.context_dim = mixture, int(context_dim)

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows[:, :-self.context_dim], rows[:, -self.context_dim:]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        residual, context = self.split(rows)
        return -self.mixture.log_prob(residual, context).mean() / residual.shape[1]


@torch.no_grad()
def stage2_validation_loss(module, rows: torch.Tensor) -> float:
    """Mean negative log-likelihood per feature of stage 2 (a MixtureNLL) on rows [r | z]."""
    total = 0.0
    for i in range(0, len(rows), 4096):
        total += float(module(rows[i:i + 4096])) * len(rows[i:i + 4096])
    return total / len(rows)


def build_stage2_mixture(dim: int, context_dim: int, components: int, rank: int):
    """Stage 2: a conditional mixture of factor analysers on the residual given stage 1's code."""
    from untwine.multistage.mixture import ConditionalMixtureOfFactorAnalysers
    return ConditionalMixtureOfFactorAnalysers(dim, context_dim=context_dim, components=components, rank=rank,
                                               init_variance=0.05, min_variance=1e-4)


@torch.no_grad()
def start_at_residual_scale(mixture, residual: torch.Tensor) -> None:
    """Stage 2's noise and means started at the residuals' variance and mean."""
    mixture.log_psi.fill_(math.log(max(float(residual.var(0).mean()), 2e-4) - 1e-4))
    mixture.means.copy_(residual.mean(0).expand_as(mixture.means))


def data_fingerprint(df: pd.DataFrame) -> str:
    """A hash of a table's values and column names: a resumed fit must see the table it started on."""
    import hashlib
    h = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    h.update(json.dumps([str(c) for c in df.columns]).encode())
    return h.hexdigest()


def holdout_rows(rows: int, holdout=None) -> int:
    """Rows a fit holds out for its privacy check: `holdout` rows (an int), a share (a float), or by
    default 10% of the table, at least min(100, 20%) so that a small table gives a usable estimate,
    at most PRIVACY_ROWS (Adult: 2,000 of 32,561); none under 50 rows."""
    if holdout is None:
        return 0 if rows < 50 else int(min(PRIVACY_ROWS, max(round(0.1 * rows), min(100, rows // 5))))
    h = int(round(holdout * rows)) if isinstance(holdout, float) else int(holdout)
    if h and rows - h < 2:
        raise DataError(f"holdout={holdout!r} leaves {rows - h} of the table's {rows} rows to fit; hold out fewer")
    return h


class TabularMultiStage:
    """See the module doc. Hyper-parameters: `latent_dim`, `hidden` (MLP widths), `objective` and
    `objective_params` (stage 1, default beta-TCVAE with beta=2), `controller` / `controller_params`,
    `steps` (stage 1's budget; None: from the training rows and width, untwine.tabular.budget),
    `batch_size`, `lr` (stage 1), `components`, `rank`, `stage2_steps` (None: from stage 1's), `stage2_lr`,
    `sigma` (initial alpha sigma, learned), `code_prior` ("normal" or "mixture": where sampling
    draws z, see the module doc) and `prior_components`, `column_types`, `seed`, `progress`, `threads`;
    `formats` (text date formats), `enforce_range` / `enforce_rounding` (decoded values kept in the
    training range / at the training decimals, the transformer's), `holdout` (rows held out for the
    fit's privacy check, see `holdout_rows`), `validation` (training rows set aside for early
    stopping, see budget.validation_rows), `early_stopping` and `patience` (checks without improvement).
    Defaults tuned on UCI Adult (benchmarks/bench_tabular_adult.py, BENCHMARKS.md). latent_dim 16
    does not help (quality 0.934, TSTR 0.883, F1 0.593, seed 0), so 8 stays. A weaker KL buys
    utility (beta 0.5: F1 0.658 and C2ST 0.885 on 3 seeds) but a beta below 1 rewards total
    correlation; a weaker weight of the whole KL keeps TC penalised twice as hard as the rest, so
    stage 1 is beta-TCVAE (beta 2) under the constant controller's KL weight 0.25, with z drawn
    from a fitted mixture prior. On seed 1 (the weakest seed of the 6,000-step model): 6,000
    steps and 50 prior components give TSTR AUC 0.897, F1 0.642; 100 components 0.899; 12,000
    steps 0.902, F1 0.667; both (the defaults) 0.904, F1 0.665, quality 0.959 (a KL weight of 0.1
    instead: 0.902, F1 0.646, closer-to-train 0.488). BENCHMARKS.md, "Adult: what moves utility" and
    "Adult: more steps and a finer code prior"."""

    def __init__(self, latent_dim: int = 8, hidden=(256, 256), objective: str = "betatcvae",
                 objective_params: dict | None = None, controller: str = "constant",
                 controller_params: dict | None = None,
                 steps: int | None = None, batch_size: int = 256, lr: float = 1e-3, components: int = 10,
                 rank: int = 4, stage2_steps: int | None = None, stage2_lr: float = 3e-3, sigma: float = 0.1,
                 code_prior: str = "mixture", prior_components: int = 100,
                 column_types: dict | None = None, seed: int = 0, progress: bool = True, threads=None,
                 formats: dict | None = None, holdout=None, enforce_range: bool = True,
                 enforce_rounding: bool = True, validation=None, early_stopping: bool = True, patience: int = 3):
        if code_prior not in CODE_PRIORS:
            raise DataError(f"code_prior={code_prior!r}; expected one of {CODE_PRIORS}")
        if isinstance(prior_components, bool) or int(prior_components) < 1:
            raise DataError(f"prior_components={prior_components!r}; expected a positive integer")
        if holdout is not None and (isinstance(holdout, bool) or not isinstance(holdout, (int, float))
                                    or holdout < 0 or (isinstance(holdout, float) and holdout >= 1)):
            raise DataError(f"holdout={holdout!r}; expected None (automatic), a number of rows or a share in [0, 1)")
        if validation is not None and (isinstance(validation, bool) or not isinstance(validation, (int, float))
                                       or validation < 0 or (isinstance(validation, float) and validation >= 1)):
            raise DataError(f"validation={validation!r}; expected None (automatic), a number of rows or a share in "
                            f"[0, 1)")
        for name, value in (("steps", steps), ("stage2_steps", stage2_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise DataError(f"{name}={value!r}; expected None (from the table's rows and width) or a positive "
                                f"integer")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise DataError(f"patience={patience!r}; expected a positive integer (validation checks without "
                            f"improvement before a stage stops)")
        self.params = {"latent_dim": int(latent_dim), "hidden": [int(h) for h in hidden], "objective": objective,
                       "objective_params": dict({"beta": 2.0} if objective_params is None else objective_params),
                       "controller": controller,
                       "controller_params": dict({"beta": 0.25} if controller_params is None else controller_params),
                       "steps": None if steps is None else int(steps), "batch_size": int(batch_size),
                       "lr": float(lr), "components": int(components), "rank": int(rank),
                       "stage2_steps": None if stage2_steps is None else int(stage2_steps),
                       "stage2_lr": float(stage2_lr), "sigma": float(sigma), "code_prior": code_prior,
                       "prior_components": int(prior_components), "column_types": dict(column_types or {}),
                       "seed": int(seed), "formats": dict(formats or {}), "holdout": holdout,
                       "enforce_range": bool(enforce_range), "enforce_rounding": bool(enforce_rounding),
                       "validation": validation, "early_stopping": bool(early_stopping), "patience": int(patience)}
        self.progress, self.threads = progress, threads
        self.transformer: TableTransformer | None = None
        self.vae = None
        self.mixture = None
        self.prior: dict[str, torch.Tensor] | None = None   # the fitted code prior (code_prior="mixture")
        self.target: str | None = None
        self.info: dict = {}

    # ---- building ---------------------------------------------------------------------------
    def _stage1_config(self, run_dir: Path, rows: int, steps: int | None = None, every: int | None = None):
        """Stage 1's engine config: `steps` (default the `steps` parameter, else 1) trained, a
        checkpoint every `every` steps (default: at the end)."""
        p = self.params
        steps = int(steps or p["steps"] or 1)
        return self._engine_config(run_dir, "tabular-stage1", steps, every or steps, {
            "data": {"name": "table"},
            "model": {"arch": "mlp", "latent_dim": p["latent_dim"], "hidden": p["hidden"], "likelihood": "mixed"},
            "objective": {"name": p["objective"], **p["objective_params"]},
            "controller": {"name": p["controller"], **p["controller_params"]},
            "optim": {"lr": p["lr"], "batch_size": min(p["batch_size"], rows)}})  # a small table: one batch

    def _stage2_config(self, run_dir: Path, rows: int, steps: int, every: int):
        p = self.params
        return self._engine_config(run_dir, "tabular-stage2", steps, every, {
            "data": {"name": "table"},
            "model": {"arch": "mlp", "latent_dim": p["latent_dim"], "hidden": p["hidden"], "likelihood": "mixed"},
            "objective": {"name": STAGE2_OBJECTIVE, "components": p["components"], "rank": p["rank"]},
            "optim": {"lr": p["stage2_lr"], "batch_size": min(p["batch_size"], rows)}})

    def _engine_config(self, run_dir: Path, name: str, steps: int, every: int, sections: dict):
        from untwine.train.config import load_config
        return load_config({**sections, "trainer": {
            "steps": int(steps), "seed": self.params["seed"], "eval_preset": "none", "pictures": False,
            "report": False, "precision": "32-true", "progress": bool(self.progress),
            "log_every": max(1, min(100, every)), "ckpt_every": int(every), "threads": self.threads},
            "run": {"dir": str(run_dir), "name": name}})

    def _build(self, dim: int):
        from untwine.nets import build_vae
        p = self.params
        lik = MixedLikelihood(self.transformer.spans, variance="learned", sigma=p["sigma"])
        self.vae = build_vae("mlp", in_dim=(dim,), latent_dim=p["latent_dim"], likelihood=lik, hidden=p["hidden"])
        self.mixture = build_stage2_mixture(dim, p["latent_dim"], p["components"], p["rank"])

    @property
    def fitted(self) -> bool:
        return self.vae is not None

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise DataError("the model is not fitted; call fit(df) first or load(dir)")

    # ---- fit ----------------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, target: str | None = None, work_dir: str | os.PathLike | None = None,
            resume: bool = False):
        """Fit the transformer, stage 1 and stage 2, each through the library's engine as a run of its
        own in `work_dir` (default: a temporary directory): WORK/stage1_run, WORK/stage2_run, with
        the transformer and WORK/fit.state.json written first. `resume=True` continues an interrupted
        fit in `work_dir` (same table, same parameters) to the weights an uninterrupted fit reaches.
        `target` is recorded (for utility evaluation) and must be a column.

        Rows: those held out for the privacy check (`holdout`, see `holdout_rows`) are never fitted;
        of the rest, a validation split (`validation`, see untwine.tabular.budget.validation_rows) is
        never trained on and decides early stopping of both stages (the best weights are kept).
        Budget: `steps` / `stage2_steps`, by default from the training rows and width
        (untwine.tabular.budget). info["privacy"]: the fit's own closer-to-train share and exact
        copies against the held-out rows (a warning above 0.55)."""
        TableTransformer.check_frame(df)
        if len(df) < MIN_ROWS:
            raise DataError(f"the table has {len(df)} row{'s' * (len(df) != 1)}; a fit needs at least {MIN_ROWS} "
                            f"(a model of a handful of rows can only copy them): give a larger table")
        if target is not None and target not in set(map(str, df.columns)):
            raise DataError(f"target {target!r} is not a column of the table (columns: {[str(c) for c in df.columns]})")
        if resume and work_dir is None:
            raise DataError("resume=True continues the fit in work_dir: give the directory of the interrupted fit")
        p, t0, cpu0 = self.params, time.perf_counter(), time.process_time()
        fitted, validation, held = self._split(df)
        work = Path(work_dir) if work_dir is not None else None
        # everything checked before anything is written: a table the fit refuses leaves no directory
        if resume:
            self._read_fit_state(work, df, target)
            self.transformer = TableTransformer.load(work)
        else:
            if work is not None and (work / FIT_STATE).exists():
                raise ConfigError(f"{str(work)!r} holds an earlier fit; continue it with resume=True, or give an "
                                  f"empty directory")
            self.transformer = TableTransformer(column_types=p["column_types"], seed=p["seed"],
                                                formats=p.get("formats"), enforce_range=p.get("enforce_range", True),
                                                enforce_rounding=p.get("enforce_rounding", True)).fit(fitted)
            if held is not None:
                self.transformer.avoid_keys(held)
        if not self.transformer.spans:
            raise DataError("every column of the table is constant: there is nothing to model")
        train_rows = self.transformer.transform(fitted.drop(validation.index) if validation is not None else fitted)
        val_rows = self.transformer.transform(validation) if validation is not None else None
        self.target = target
        budget1 = p["steps"] or budget.stage1_steps(len(train_rows), train_rows.shape[1], p["batch_size"])
        budget2 = p["stage2_steps"] or budget.stage2_steps(budget1)
        self._stage1_config(Path("."), len(train_rows), budget1)   # a config error now, not after stage 1
        torch.manual_seed(p["seed"])
        self._build(train_rows.shape[1])
        t_transform = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="untwine-tabular-") as tmp:
            work = work if work is not None else Path(tmp)
            if not resume:
                work.mkdir(parents=True, exist_ok=True)
                self.transformer.save(work)
                self._write_fit_state(work, df, target)
            stage1 = self._train_stage(
                work / STAGE1_RUN, lambda steps, every: self._stage1_config(work / STAGE1_RUN, len(train_rows), steps,
                                                                             every),
                TableData(train_rows, self.vae.likelihood, val_rows), budget1,
                lambda weights: self._stage1_validation(weights, val_rows))
            self.vae.load_state_dict(stage1.pop("weights"))
            self.vae.eval()
            for q in self.vae.parameters():
                q.requires_grad_(False)
            t1 = time.perf_counter()
            x = torch.from_numpy(train_rows)
            z, y = self._encode_decode(x)
            self.prior = self._fit_code_prior(x) if p["code_prior"] == "mixture" else None
            t_prior = time.perf_counter() - t1
            stage2_rows = torch.cat([x - y, z], 1).numpy()
            stage2_val = None
            if val_rows is not None:
                zv, yv = self._encode_decode(torch.from_numpy(val_rows))
                stage2_val = torch.cat([torch.from_numpy(val_rows) - yv, zv], 1).numpy()
            stage2 = self._train_stage(
                work / STAGE2_RUN, lambda steps, every: self._stage2_config(work / STAGE2_RUN, len(x), steps, every),
                TableData(stage2_rows, validation=stage2_val), budget2,
                lambda weights: self._stage2_validation(weights, stage2_val))
            self.mixture.load_state_dict(stage2.pop("weights"))
            self.mixture.eval()
        self.info = {"rows": len(df), "training_rows": len(train_rows),
                     "validation_rows": 0 if val_rows is None else len(val_rows),
                     "features": int(train_rows.shape[1]), "transform_seconds": t_transform,
                     "stage1": stage1, "stage1_seconds": stage1["seconds"], "prior_seconds": t_prior,
                     "stage2": stage2, "stage2_seconds": stage2["seconds"],
                     "stage2_nll_per_dim": (stage2["final_terms"] or {}).get("nll_per_dim"),
                     "stage1_final": stage1["final_terms"]}
        self.info["privacy"] = self._privacy_check(
            fitted.drop(validation.index) if validation is not None else fitted, held) if held is not None else None
        self.info["fit_seconds"] = time.perf_counter() - t0
        self.info["fit_cpu_seconds"] = time.process_time() - cpu0
        return self

    # ---- the fit's parts -----------------------------------------------------------------------
    def _split(self, df: pd.DataFrame):
        """(fitted rows, the validation rows among them or None, the privacy holdout or None): the
        holdout first (never fitted), then the validation rows from what is left, both seeded."""
        p = self.params
        held, validation = None, None
        h = holdout_rows(len(df), p.get("holdout"))
        if h:
            perm = np.random.default_rng(p["seed"]).permutation(len(df))
            held, df = df.iloc[np.sort(perm[:h])], df.iloc[np.sort(perm[h:])]
        v = budget.validation_rows(len(df), p.get("validation")) if p.get("early_stopping", True) else 0
        if v:
            if len(df) - v < 2:
                raise DataError(f"validation={p.get('validation')!r} leaves {len(df) - v} rows to train on; set aside "
                                f"fewer")
            perm = np.random.default_rng([p["seed"], 1]).permutation(len(df))
            validation = df.iloc[np.sort(perm[:v])]
        return df, validation, held

    def _fit_state(self, df: pd.DataFrame, target) -> dict:
        return json.loads(json.dumps({"format": FORMAT_VERSION, "data": data_fingerprint(df), "rows": len(df),
                                      "target": target, "params": self.params}, default=str))

    def _write_fit_state(self, work: Path, df: pd.DataFrame, target) -> None:
        atomic_write_bytes(work / FIT_STATE, json.dumps(self._fit_state(df, target), indent=1).encode())

    def _read_fit_state(self, work: Path, df: pd.DataFrame, target) -> None:
        """Refuse to resume a fit of another table or with other parameters."""
        path = work / FIT_STATE
        if not path.is_file():
            raise ConfigError(f"{str(work)!r} holds no interrupted fit to resume ({FIT_STATE} is missing); start the "
                              f"fit without resume")
        try:
            saved = json.loads(path.read_text())
        except ValueError as e:
            raise CheckpointError(f"{str(path)!r} is damaged ({e}); start the fit again in an empty directory") from e
        now = self._fit_state(df, target)
        if saved.get("data") != now["data"]:
            raise ConfigError(f"the fit in {str(work)!r} was started on another table ({saved.get('rows')} rows, "
                              f"a different content); resume with the same data")
        changed = {k: (saved.get("params", {}).get(k), v) for k, v in now["params"].items()
                   if saved.get("params", {}).get(k) != v}
        if saved.get("target") != target:
            changed["target"] = (saved.get("target"), target)
        if changed:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(f"the fit in {str(work)!r} was started with other settings ({shown}); resume with the "
                              f"settings it started with")

    def _stage1_validation(self, weights: dict, rows: np.ndarray | None) -> float | None:
        if rows is None:
            return None
        self.vae.load_state_dict(weights)
        self.vae.eval()
        return stage1_validation_loss(self.vae, torch.from_numpy(rows))

    def _stage2_validation(self, weights: dict, rows: np.ndarray | None) -> float | None:
        if rows is None:
            return None
        self.mixture.load_state_dict(weights)
        self.mixture.eval()
        return stage2_validation_loss(MixtureNLL(self.mixture, self.params["latent_dim"]), torch.from_numpy(rows))

    def _train_stage(self, run_dir: Path, config, data: TableData, steps: int, validate) -> dict:
        """Train one stage through the engine in `run_dir`, up to `steps`, checking the validation loss
        (`validate(weights)`) every budget.evaluation_every(steps) steps and stopping after
        `patience` checks without improvement; returns the best weights (the last without
        validation rows) and what happened. Each stretch between two checks is a run of the engine
        (the first new, the next resumed), so an interruption anywhere resumes to the same weights:
        the checks depend only on the weights at those steps, and the engine resumes exactly.
        The checks and the best weights are kept in RUN/early_stopping.json and RUN/best.safetensors."""
        from safetensors.torch import load_file
        from safetensors.torch import save as save_tensors
        from untwine.train import train
        from untwine.train.checkpoint import load_checkpoint, load_model_weights
        every = budget.evaluation_every(steps) if data.validation is not None else steps
        record_path, best_path = run_dir / "early_stopping.json", run_dir / "best.safetensors"
        stopper = budget.EarlyStopping(self.params.get("patience", 3))
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if (record.get("steps"), record.get("every")) != (steps, every):
                raise CheckpointError(f"{str(record_path)!r} was written for {record.get('steps')} steps checked every "
                                      f"{record.get('every')}, this fit trains {steps} checked every {every}; resume "
                                      f"with the fit's own settings")
            stopper = budget.EarlyStopping(stopper.patience, evaluations=record["evaluations"])
        seconds, final_terms, done = 0.0, {}, 0
        while True:
            try:
                done = load_checkpoint(run_dir).step
            except CheckpointError:
                done = 0
            checked = {s for s, _ in stopper.evaluations}
            if data.validation is not None and done and (done % every == 0 or done == steps) and done not in checked:
                weights, _ = load_model_weights(run_dir)
                if stopper.record(done, validate(weights)):
                    atomic_write_bytes(best_path, save_tensors({k: v.contiguous() for k, v in weights.items()}))
                atomic_write_bytes(record_path, json.dumps({"steps": steps, "every": every, **stopper.state(),
                                                            "best_step": stopper.best_step}, indent=1).encode())
            if done >= steps or stopper.should_stop():
                break
            summary = train(config(min(steps, (done // every + 1) * every), every), run_dir=run_dir,
                            resume=done > 0, data=data)
            seconds += summary["wall_seconds"]
            final_terms = summary["final_terms"]
        if stopper.best_step is not None:
            weights = load_file(str(best_path))
        else:
            weights, _ = load_model_weights(run_dir)
        return {"weights": weights, "budget": steps, "trained": done, "best_step": stopper.best_step,
                "stopped_early": done < steps, "validation": stopper.evaluations, "seconds": seconds,
                "final_terms": final_terms}

    def _privacy_check(self, train: pd.DataFrame, held: pd.DataFrame) -> dict:
        """Closer-to-train share and exact copies of synthetic rows against the fitted rows and the
        held-out ones (untwine.tabular.evaluation.privacy: the whole fitted table is searched); a
        warning above PRIVACY_WARNING. Measured because quality and C2ST looked perfect on a 500-row
        table whose synthetic rows were 76% nearer a training row (issue 24)."""
        import warnings
        from untwine.tabular.evaluation import privacy
        t = time.perf_counter()
        # PRIVACY_ROWS synthetic rows whatever the table's size: the share's sampling error shrinks
        synthetic = self.sample(PRIVACY_ROWS, seed=self.params["seed"] + 3)
        got = privacy(train, synthetic, held, n=len(synthetic), seed=self.params["seed"])
        got.update(holdout_rows=len(held), seconds=time.perf_counter() - t)
        if got["closer_to_train"] > PRIVACY_WARNING:
            warnings.warn(f"the synthetic rows lie nearer the training rows than fresh rows would: closer-to-train "
                          f"{got['closer_to_train']:.3f} on {len(held)} held-out rows (0.5 is no memorisation; "
                          f"above {PRIVACY_WARNING} it copies), exact copies {got['exact_copy_rate']:.3f}; train "
                          f"for fewer steps", UserWarning, stacklevel=3)
        return got

    @torch.no_grad()
    def _fit_code_prior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """A full-covariance Gaussian mixture fitted by EM (scikit-learn) to one draw of q(z | x) per
        row (at most PRIOR_FIT_ROWS rows): the aggregate posterior, which sampling then draws z from
        instead of N(0, I) (ex-post density estimation, Ghosh et al. 2020; the two-stage VAE's point,
        Dai & Wipf 2019, that the codes' distribution differs from the prior and leaves holes where
        the decoder returns mean-like rows). Stage 1's weights, codes and factors are unchanged."""
        from sklearn.mixture import GaussianMixture
        p = self.params
        g = torch.Generator().manual_seed(p["seed"] + 2)
        if len(x) > PRIOR_FIT_ROWS:
            x = x[torch.randperm(len(x), generator=g)[:PRIOR_FIT_ROWS]]
        mu, sd = self._posterior(x)
        codes = (mu + sd * torch.randn(mu.shape, generator=g)).double().numpy()
        k = max(1, min(p["prior_components"], len(codes) // 100))   # at least 100 codes a component
        gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-5, max_iter=200, random_state=p["seed"]).fit(codes)
        return {"weights": torch.from_numpy(gm.weights_).float(), "means": torch.from_numpy(gm.means_).float(),
                "chol": torch.linalg.cholesky(torch.from_numpy(gm.covariances_)).float()}

    @torch.no_grad()
    def _encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, y): the encoder mean and stage 1's decoded row, in batches."""
        zs, ys = [], []
        for i in range(0, len(x), 4096):
            z = self.vae.encode(x[i:i + 4096])[0]
            zs.append(z)
            ys.append(self.decode(z))
        return torch.cat(zs), torch.cat(ys)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Stage 1's decoded row y = E[x | z] (tanh alpha, softmax probabilities)."""
        return self.vae.likelihood.mean(self.vae.decode(z))

    @torch.no_grad()
    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Stage 1's code (the encoder mean) of every row of `df`: the representation."""
        self._check_fitted()
        return self._encode_decode(torch.from_numpy(self.transformer.transform(df)))[0].numpy()

    @torch.no_grad()
    def posterior(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard deviation) of stage 1's q(z | x) for every row of `df`."""
        self._check_fitted()
        mu, sd = self._posterior(torch.from_numpy(self.transformer.transform(df)))
        return mu.numpy(), sd.numpy()

    @torch.no_grad()
    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sd) of q(z | x) for transformed rows, in batches."""
        mus, sds = [], []
        for i in range(0, len(x), 4096):
            mu, logvar = self.vae.encode(x[i:i + 4096])
            mus.append(mu)
            sds.append(torch.exp(0.5 * logvar))
        return torch.cat(mus), torch.cat(sds)

    # ---- sampling -------------------------------------------------------------------------------
    @property
    def _discrete_index(self) -> torch.Tensor:
        """Coordinates of every softmax span (categories, modes, missing indicators), sorted."""
        return torch.tensor([i for sp in self.transformer.spans if sp.kind == "softmax"
                             for i in range(sp.start, sp.start + sp.width)], dtype=torch.long)

    def _missing_spans(self) -> list[tuple[int, torch.Tensor]]:
        """(start of the column's missing span, mask of its other discrete coordinates) per column
        that can be missing."""
        out = []
        for sp in self.transformer.spans:
            if sp.kind == "softmax" and sp.name == f"{sp.column}.missing":
                own = torch.zeros(self.transformer.output_dim, dtype=torch.bool)
                for other in self.transformer.spans:
                    if other.column == sp.column and other is not sp and other.kind == "softmax":
                        own[other.start:other.start + other.width] = True
                out.append((sp.start, own))
        return out

    @torch.no_grad()
    def sample_rows(self, n: int, seed: int = 0, conditions: dict | None = None, oversample: int = 20,
                    stage2: bool = True, discrete: str = "stage1") -> np.ndarray:
        """Transformed rows (n, F); `stage2=False` gives stage 1 alone (its likelihood's samples).

        `discrete` chooses how the combined model draws the one-hot spans (categories, modes,
        missing indicators). "stage1" (default): from stage 1's categorical p(x_D | z), then the
        continuous coordinates from stage 2's exact conditional p(r_A | r_D, z), so
        p(x | z) = p1(x_D | z) p2(x_A | x_D, z): stage 2 adds the detail of the continuous values given
        the categories actually drawn (alpha follows its mode). "residual": the whole row as y + r with
        r ~ p2(r | z), read by arg max per span; measured on Adult it spreads mass onto rare
        categories (race 0.998 -> 0.901 column shape), kept for comparison."""
        self._check_fitted()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DataError(f"number of rows n={n!r}; expected a positive integer")
        if discrete not in ("stage1", "residual"):
            raise DataError(f"discrete={discrete!r}; expected 'stage1' or 'residual'")
        g = torch.Generator().manual_seed(int(seed))
        fixed: dict[int, float] = {}
        for col, value in (conditions or {}).items():
            fixed.update(self.transformer.encode_condition(str(col), value))
        # Rows are drawn in chunks: the samplers hold (rows, components, features) tensors, which for
        # all of KDD Census-Income's 199,523 rows at once peaked at 15 GiB (2.6 GiB in chunks). The
        # chunk depends only on the model's sizes, so a seed gives the same rows on every machine;
        # under conditions it counts the candidates (oversample per row), not the rows.
        chunk = max(1, self._chunk_rows() // (int(oversample) if fixed else 1))
        parts, ess = [], 0.0
        for start in range(0, n, chunk):
            parts.append(self._sample_chunk(min(chunk, n - start), fixed, oversample, stage2, discrete, g))
            ess += self.last_condition_ess if fixed else 0.0  # set by the chunk's resampling
        if fixed:
            self.last_condition_ess = ess  # effective candidates behind the n rows, over all chunks
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _chunk_rows(self, budget: int = 2 ** 26) -> int:
        """Rows per sampling chunk: about `budget` floats in a (rows, components, features) tensor."""
        return max(256, budget // (self.mixture.components * self.transformer.output_dim))

    def _draw_z(self, n: int, g) -> torch.Tensor:
        """n stage-1 codes from the sampling prior: N(0, I), or (code_prior="mixture") the Gaussian
        mixture fitted to the aggregate posterior."""
        eps = torch.randn(n, self.params["latent_dim"], generator=g)
        if self.prior is None:
            return eps
        k = torch.multinomial(self.prior["weights"], n, replacement=True, generator=g)
        return self.prior["means"][k] + torch.einsum("nij,nj->ni", self.prior["chol"][k], eps)

    def _sample_chunk(self, n: int, fixed: dict, oversample: int, stage2: bool, discrete: str, g) -> np.ndarray:
        if not fixed and (not stage2 or discrete == "residual"):
            z = self._draw_z(n, g)
            if not stage2:
                return self.vae.likelihood.sample(self.vae.decode(z), g).numpy()
            return (self.decode(z) + self.mixture.sample(z, generator=g)).numpy()
        if discrete == "residual":
            return self._sample_conditioned_residual(n, fixed, oversample, g)
        return self._sample_discrete_first(n, fixed, oversample, g)

    def _sample_discrete_first(self, n: int, fixed: dict, oversample: int, g) -> np.ndarray:
        """The "stage1" sampler (see sample_rows), with conditions fixing coordinates `fixed`:
        sampling-importance-resampling of (z, the discrete draws) with weights
        p1(x_{D,fixed} | z) * p2(r_{A,fixed} | r_D, z), then the free continuous coordinates from
        p2(r_A | r_D, r_{A,fixed}, z). Without conditions every weight is 1 and no resampling happens."""
        d = self.params["latent_dim"]
        disc = self._discrete_index
        is_disc = torch.zeros(self.transformer.output_dim, dtype=torch.bool)
        is_disc[disc] = True
        m = n if not fixed else max(n * int(oversample), 256)
        z = self._draw_z(m, g)
        params = self.vae.decode(z)
        y = self.vae.likelihood.mean(params)
        x = y.clone()
        x[:, disc] = self.vae.likelihood.sample(params, g)[:, disc]        # stage 1's categories
        for missing, own in self._missing_spans():   # a value drawn missing: its spans are zero, as in the data
            x[(x[:, missing + 1] == 1.0)[:, None] & own[None]] = 0.0
        log_w = torch.zeros(m)
        fixed_alpha = []
        for i in sorted(fixed):
            if is_disc[i]:
                if fixed[i] == 1.0:   # the condition's category: weight by stage 1's probability of it
                    log_w += torch.log(y[:, i].clamp_min(1e-30))
            else:
                fixed_alpha.append(i)
            x[:, i] = fixed[i]
        known = torch.tensor(sorted(set(disc.tolist()) | set(fixed_alpha)), dtype=torch.long)
        if known.numel() == 0:   # no one-hot span and no condition: the mixture's own draw given z
            return (y + self.mixture.sample(z, generator=g)).numpy()
        log_joint = self._condition_log_joint(x[:, known] - y[:, known], z, known)      # (M, K)
        if fixed_alpha:   # p2(r_{A,fixed} | r_D, z) = p2(r_known | z) / p2(r_D | z)
            log_w += torch.logsumexp(log_joint, 1) - torch.logsumexp(
                self._condition_log_joint(x[:, disc] - y[:, disc], z, disc), 1)
        if fixed:
            pick = torch.multinomial(torch.softmax(log_w, 0), n, replacement=True, generator=g)
            self.last_condition_ess = float(1.0 / (torch.softmax(log_w, 0) ** 2).sum())
            z, y, x, log_joint = z[pick], y[pick], x[pick], log_joint[pick]
        k = torch.multinomial(torch.softmax(log_joint, 1), 1, generator=g).squeeze(1)
        out = y + self._conditional_residual(k, x[:, known] - y[:, known], known, g)
        out[:, known] = x[:, known]
        return out.numpy()

    def _sample_conditioned_residual(self, n: int, fixed: dict, oversample: int, g) -> np.ndarray:
        """The "residual" sampler under conditions: SIR of z with weights p2(x_C | z) (the mixture's
        closed-form marginal on C), then k ~ p(k | x_C, z) and the other coordinates from the
        mixture's conditional; the fixed coordinates set to the condition's values."""
        d = self.params["latent_dim"]
        idx = torch.tensor(sorted(fixed), dtype=torch.long)
        values = torch.tensor([fixed[i] for i in sorted(fixed)], dtype=torch.float32)
        m = max(n * int(oversample), 256)
        z_all = self._draw_z(m, g)
        y_all = self.decode(z_all)
        r_c = values[None] - y_all[:, idx]
        log_joint = self._condition_log_joint(r_c, z_all, idx)            # (M, K)
        log_w = torch.logsumexp(log_joint, 1)
        pick = torch.multinomial(torch.softmax(log_w, 0), n, replacement=True, generator=g)
        z, y, r_c, log_joint = z_all[pick], y_all[pick], r_c[pick], log_joint[pick]
        k = torch.multinomial(torch.softmax(log_joint, 1), 1, generator=g).squeeze(1)
        r = self._conditional_residual(k, r_c, idx, g)
        x = y + r
        x[:, idx] = values
        self.last_condition_ess = float(1.0 / (torch.softmax(log_w, 0) ** 2).sum())
        return x.numpy()

    def _condition_log_joint(self, r_c: torch.Tensor, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """log pi_k(z) + log N(r_C; mu_kC, L_kC L_kC^T + diag psi_kC), shape (B, K)."""
        mix = self.mixture
        mu, lo, psi = mix.means[:, idx], mix.loadings[:, idx], mix.psi[:, idx]
        cov = lo @ lo.transpose(1, 2) + torch.diag_embed(psi)                   # (K, c, c)
        dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
        return mix.log_weights(z) + dist.log_prob(r_c[:, None, :])

    def _conditional_residual(self, k: torch.Tensor, r_c: torch.Tensor, idx: torch.Tensor, g) -> torch.Tensor:
        """r ~ p(r | r_C, k): w | r_C, k Gaussian (closed form), then mu_k + L_k w + noise."""
        mix = self.mixture
        lo_c, psi_c = mix.loadings[k][:, idx], mix.psi[k][:, idx]                # (B, c, r), (B, c)
        prec = torch.eye(mix.rank) + torch.einsum("bcr,bc,bcs->brs", lo_c, 1.0 / psi_c, lo_c)
        cov = torch.linalg.inv(prec)
        mean = torch.einsum("brs,bcs,bc->br", cov, lo_c, (r_c - mix.means[k][:, idx]) / psi_c)
        chol = torch.linalg.cholesky(cov)
        w = mean + torch.einsum("brs,bs->br", chol, torch.randn(len(k), mix.rank, generator=g))
        noise = torch.randn(len(k), mix.dim, generator=g) * mix.psi[k].sqrt()
        return mix.decode(k, w) + noise

    def sample(self, n: int, seed: int = 0, conditions: dict | None = None, oversample: int = 20,
               discrete: str = "stage1") -> pd.DataFrame:
        """n synthetic rows as a DataFrame of the training table's columns and dtypes; with
        `conditions` ({column: value}) every row meets them (see the module doc and sample_rows)."""
        rows = self.sample_rows(n, seed, conditions, oversample, discrete=discrete)
        out = self.transformer.inverse_transform(rows)
        for col, value in (conditions or {}).items():
            # the condition's value itself, not its float32 round trip (50000 came back 50000.0000887)
            value = self.transformer.condition_value(str(col), value)
            if value is not None:   # a missing value is decoded as missing already
                out[str(col)] = pd.Series([value] * len(out), index=out.index).astype(out[str(col)].dtype)
        if conditions:
            ess = self.last_condition_ess
            if ess < ESS_WARNING * n:
                import warnings
                warnings.warn(f"conditional sampling: the {n} rows rest on an effective sample size of {ess:.0f} "
                              f"candidates (rows repeat the same codes); raise oversample (now {oversample}; "
                              f"--oversample on the command line) for more varied rows", UserWarning, stacklevel=2)
        return out

    @torch.no_grad()
    def reconstruct(self, df: pd.DataFrame, stage2: bool = True) -> np.ndarray:
        """Transformed rows as the model explains them: stage 1's decoded row y, plus (stage2=True)
        stage 2's most probable residual E[r | x, z] under its most responsible component."""
        self._check_fitted()
        x = torch.from_numpy(self.transformer.transform(df))
        z, y = self._encode_decode(x)
        if not stage2:
            return y.numpy()
        k, w = self.mixture.posterior(x - y, z).most_probable()
        return (y + self.mixture.decode(k, w)).numpy()

    # ---- save / load ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """transformer.json/.safetensors, stage1.safetensors, stage2.safetensors, model.json."""
        from safetensors.torch import save as save_tensors
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.transformer.save(directory)
        atomic_write_bytes(directory / "stage1.safetensors",
                           save_tensors({k: v.contiguous() for k, v in self.vae.state_dict().items()}))
        atomic_write_bytes(directory / "stage2.safetensors",
                           save_tensors({k: v.contiguous() for k, v in self.mixture.state_dict().items()}))
        if self.prior is not None:
            atomic_write_bytes(directory / "prior.safetensors",
                               save_tensors({k: v.contiguous() for k, v in self.prior.items()}))
        meta = {"format": FORMAT_VERSION, "params": self.params, "target": self.target, "info": self.info}
        atomic_write_bytes(directory / "model.json", json.dumps(meta, indent=1, default=str).encode())
        self.transformer.write_metadata(directory / "metadata.json")   # the column types, to read and edit
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TabularMultiStage":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        directory = Path(directory)
        meta_path = directory / "model.json"
        if not meta_path.is_file():
            raise CheckpointError(f"{str(meta_path)!r} is missing: {str(directory)!r} is not a saved tabular model "
                                  f"(`untwine tabular fit` writes one)")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise CheckpointError(f"{str(meta_path)!r} is corrupt ({e}); fit the model again") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise CheckpointError(f"{str(meta_path)!r} has format {got!r}; expected {FORMAT_VERSION}")
        if not isinstance(meta.get("params"), dict):
            raise CheckpointError(f"{str(meta_path)!r} lacks the model's \"params\"; the file is damaged: fit the "
                                  f"model again")
        params = {"code_prior": "normal", **meta["params"]}   # models saved before the code prior existed
        try:
            model = cls(**params, progress=False)
        except (TypeError, DataError) as e:
            raise CheckpointError(f"{str(meta_path)!r} has parameters this untwine cannot build ({e}); "
                                  f"fit the model again") from e
        try:
            model.transformer = TableTransformer.load(directory)
        except DataError as e:
            raise CheckpointError(str(e)) from e
        model.target, model.info = meta.get("target"), meta.get("info", {})
        model._build(model.transformer.output_dim)
        try:
            model.vae.load_state_dict(load_file(str(directory / "stage1.safetensors")))
            model.mixture.load_state_dict(load_file(str(directory / "stage2.safetensors")))
            if params["code_prior"] == "mixture":
                prior = load_file(str(directory / "prior.safetensors"))
                d, k = model.params["latent_dim"], len(prior.get("weights", ()))
                shapes = {"weights": (k,), "means": (k, d), "chol": (k, d, d)}
                if k == 0 or {n: tuple(t.shape) for n, t in prior.items()} != shapes:
                    raise ValueError(f"prior.safetensors holds {({n: tuple(t.shape) for n, t in prior.items()})}, "
                                     f"expected {shapes}")
                if not all(torch.isfinite(t).all() for t in prior.values()):
                    raise ValueError("prior.safetensors holds non-finite values")
                model.prior = prior
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:   # a damaged file: SafetensorError
            raise CheckpointError(f"the weights in {str(directory)!r} are missing, damaged or do not fit model.json "
                                  f"({type(e).__name__}: {e}); fit the model again") from e
        model.vae.eval()
        model.mixture.eval()
        return model
