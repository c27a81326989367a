"""The tabular multi-stage model: a disentangling VAE on transformed rows, then the detail it misses.

    model = TabularMultiStage(latent_dim=8, steps=12000).fit(df, target="income")
    synthetic = model.sample(len(df), seed=0)
    rare = model.sample(100, seed=0, conditions={"job": "pilot"})   # exactly 100 rows, all pilots
    model.save("model_dir"); model = TabularMultiStage.load("model_dir")

Stage 1: a beta-TCVAE (any objective/controller of the library: `objective`, `objective_params`,
`controller`) with an MLP encoder/decoder and the mixed likelihood, trained by the library's engine
(`untwine.train.train(cfg, data=TableData(...))`, the table-data contract: uniform index batches,
the likelihood supplied by the data, no disentanglement metrics).
Stage 2: a conditional mixture of factor analysers (untwine.multistage.mixture) on the residual
r = x - y of the transformed row x given stage 1's decoded row y = E[x | z] (z the encoder mean),
with mixing weights from z: p(x | z) = sum_k pi_k(z) N(x; y(z) + mu_k, L_k L_k^T + diag psi_k).
It is fitted by `fit_stage2` below, a small Adam loop on the exact negative log-likelihood: the
engine's multi-stage path dequantises 8-bit images, which a table row is not, so it does not fit.
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

from untwine.errors import CheckpointError, DataError
from untwine.io import atomic_write_bytes
from untwine.tabular.likelihood import MixedLikelihood
from untwine.tabular.transformer import TableTransformer

FORMAT_VERSION = 1
CODE_PRIORS = ("normal", "mixture")
PRIOR_FIT_ROWS = 50_000   # rows of q(z) the code prior's EM sees (KDD's 199,523 would cost 4x for nothing)
PRIVACY_WARNING = 0.55   # a fit warns when its synthetic rows are nearer its training rows than this share
PRIVACY_ROWS = 2000      # held-out rows at most (and synthetic rows) of the fit's own privacy check
ESS_WARNING = 0.5   # conditional sampling warns when the effective sample size is below this share of the rows


class TableData:
    """Transformed rows as the engine's table-data contract: __len__, batch(indices, device),
    image_shape = (F,), the `likelihood` module, factor_space = None."""

    factor_space = None

    def __init__(self, rows: np.ndarray, likelihood: torch.nn.Module | None = None):
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or len(rows) == 0:
            raise DataError(f"TableData needs a non-empty (rows, features) array, got shape {rows.shape}")
        self.rows = torch.from_numpy(rows)
        self.image_shape = (rows.shape[1],)
        self.likelihood = likelihood

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray, device=None) -> torch.Tensor:
        out = self.rows[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        return out.to(device) if device is not None else out


def _progress(enabled: bool, total: int):
    # the engine's progress (a rich bar on a terminal, plain lines otherwise), for stage 2's own loop
    from untwine.train.progress import Progress
    return Progress(enabled, total, 0)


def fit_stage2(mixture, residual: torch.Tensor, context: torch.Tensor, steps: int, batch_size: int, lr: float,
               seed: int, progress: bool = False) -> list[float]:
    """Stage 2's loop (see the module doc for why it is not the engine's): Adam on the mean exact
    negative log-likelihood of the residual given the context, uniform batches drawn from (seed,
    step). Returns the loss every 50 steps."""
    opt = torch.optim.Adam(mixture.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bar = _progress(progress, steps)
    losses = []
    n = len(residual)
    try:
        for step in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            loss = -mixture.log_prob(residual[idx], context[idx]).mean() / residual.shape[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            if not math.isfinite(value):
                raise DataError(f"stage 2's loss became {value} at step {step}; lower stage2_lr")
            if step % 50 == 0 or step == steps - 1:
                losses.append(value)
            bar.update(step + 1, {"stage 2 nll/dim": value})  # this step's, never a stale one
    finally:
        bar.close()
    return losses


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
    `steps`, `batch_size`, `lr` (stage 1), `components`, `rank`, `stage2_steps`, `stage2_lr`,
    `sigma` (initial alpha sigma, learned), `code_prior` ("normal" or "mixture": where sampling
    draws z, see the module doc) and `prior_components`, `column_types`, `seed`, `progress`, `threads`;
    `formats` (text date formats), `enforce_range` / `enforce_rounding` (decoded values kept in the
    training range / at the training decimals, the transformer's), `holdout` (rows held out for the
    fit's privacy check, see `holdout_rows`).
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
                 steps: int = 12000, batch_size: int = 256, lr: float = 1e-3, components: int = 10, rank: int = 4,
                 stage2_steps: int = 1500, stage2_lr: float = 3e-3, sigma: float = 0.1,
                 code_prior: str = "mixture", prior_components: int = 100,
                 column_types: dict | None = None, seed: int = 0, progress: bool = True, threads=None,
                 formats: dict | None = None, holdout=None, enforce_range: bool = True,
                 enforce_rounding: bool = True):
        if code_prior not in CODE_PRIORS:
            raise DataError(f"code_prior={code_prior!r}; expected one of {CODE_PRIORS}")
        if isinstance(prior_components, bool) or int(prior_components) < 1:
            raise DataError(f"prior_components={prior_components!r}; expected a positive integer")
        if holdout is not None and (isinstance(holdout, bool) or not isinstance(holdout, (int, float))
                                    or holdout < 0 or (isinstance(holdout, float) and holdout >= 1)):
            raise DataError(f"holdout={holdout!r}; expected None (automatic), a number of rows or a share in [0, 1)")
        self.params = {"latent_dim": int(latent_dim), "hidden": [int(h) for h in hidden], "objective": objective,
                       "objective_params": dict({"beta": 2.0} if objective_params is None else objective_params),
                       "controller": controller,
                       "controller_params": dict({"beta": 0.25} if controller_params is None else controller_params),
                       "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr),
                       "components": int(components), "rank": int(rank), "stage2_steps": int(stage2_steps),
                       "stage2_lr": float(stage2_lr), "sigma": float(sigma), "code_prior": code_prior,
                       "prior_components": int(prior_components), "column_types": dict(column_types or {}),
                       "seed": int(seed), "formats": dict(formats or {}), "holdout": holdout,
                       "enforce_range": bool(enforce_range), "enforce_rounding": bool(enforce_rounding)}
        self.progress, self.threads = progress, threads
        self.transformer: TableTransformer | None = None
        self.vae = None
        self.mixture = None
        self.prior: dict[str, torch.Tensor] | None = None   # the fitted code prior (code_prior="mixture")
        self.target: str | None = None
        self.info: dict = {}

    # ---- building ---------------------------------------------------------------------------
    def _stage1_config(self, run_dir: Path, rows: int):
        from untwine.train.config import load_config
        p = self.params
        return load_config({
            "data": {"name": "table"},
            "model": {"arch": "mlp", "latent_dim": p["latent_dim"], "hidden": p["hidden"], "likelihood": "mixed"},
            "objective": {"name": p["objective"], **p["objective_params"]},
            "controller": {"name": p["controller"], **p["controller_params"]},
            "optim": {"lr": p["lr"], "batch_size": min(p["batch_size"], rows)},  # a small table: one batch
            "trainer": {"steps": p["steps"], "seed": p["seed"], "eval_preset": "none", "pictures": False,
                        "report": False, "precision": "32-true", "progress": bool(self.progress),
                        "log_every": max(1, min(100, p["steps"])), "ckpt_every": p["steps"], "threads": self.threads},
            "run": {"dir": str(run_dir), "name": "tabular-stage1"},
        })

    def _build(self, dim: int):
        from untwine.multistage.mixture import ConditionalMixtureOfFactorAnalysers
        from untwine.nets import build_vae
        p = self.params
        lik = MixedLikelihood(self.transformer.spans, variance="learned", sigma=p["sigma"])
        self.vae = build_vae("mlp", in_dim=(dim,), latent_dim=p["latent_dim"], likelihood=lik, hidden=p["hidden"])
        self.mixture = ConditionalMixtureOfFactorAnalysers(dim, context_dim=p["latent_dim"],
                                                           components=p["components"], rank=p["rank"],
                                                           init_variance=0.05, min_variance=1e-4)

    @property
    def fitted(self) -> bool:
        return self.vae is not None

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise DataError("the model is not fitted; call fit(df) first or load(dir)")

    # ---- fit ----------------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, target: str | None = None, run_dir: str | os.PathLike | None = None):
        """Fit the transformer, stage 1 (through the engine, in `run_dir`, default a temporary
        directory) and stage 2. `target` is recorded (for utility evaluation) and must be a column.
        Rows held out (`holdout`, see `holdout_rows`) are never fitted: the fit measures its own
        closer-to-train share and exact copies against them (info["privacy"]; a warning above 0.55)."""
        from untwine.train import train
        from untwine.train.checkpoint import load_model_weights
        TableTransformer.check_frame(df)
        if target is not None and target not in set(map(str, df.columns)):
            raise DataError(f"target {target!r} is not a column of the table (columns: {[str(c) for c in df.columns]})")
        p, t0 = self.params, time.perf_counter()
        held = None
        h = holdout_rows(len(df), p.get("holdout"))
        if h:
            perm = np.random.default_rng(p["seed"]).permutation(len(df))
            held, df = df.iloc[np.sort(perm[:h])], df.iloc[np.sort(perm[h:])]
        self.transformer = TableTransformer(column_types=p["column_types"], seed=p["seed"], formats=p.get("formats"),
                                            enforce_range=p.get("enforce_range", True),
                                            enforce_rounding=p.get("enforce_rounding", True)).fit(df)
        if held is not None:
            self.transformer.avoid_keys(held)
        if not self.transformer.spans:
            raise DataError("every column of the table is constant: there is nothing to model")
        rows = self.transformer.transform(df)
        self.target = target
        torch.manual_seed(p["seed"])
        self._build(rows.shape[1])
        t_transform = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="untwine-tabular-") as tmp:
            rd = Path(run_dir) if run_dir is not None else Path(tmp) / "stage1"
            summary = train(self._stage1_config(rd, len(rows)), run_dir=rd, data=TableData(rows, self.vae.likelihood))
            weights, _ = load_model_weights(rd)
        self.vae.load_state_dict(weights)
        self.vae.eval()
        for q in self.vae.parameters():
            q.requires_grad_(False)
        t1 = time.perf_counter()
        x = torch.from_numpy(rows)
        z, y = self._encode_decode(x)
        self.prior = self._fit_code_prior(x) if p["code_prior"] == "mixture" else None
        t_prior = time.perf_counter() - t1
        residual = x - y
        with torch.no_grad():  # start the noise at the residual's scale
            self.mixture.log_psi.fill_(math.log(max(float(residual.var(0).mean()), 2e-4) - 1e-4))
            self.mixture.means.copy_(residual.mean(0).expand_as(self.mixture.means))
        torch.manual_seed(p["seed"] + 1)
        losses = fit_stage2(self.mixture, residual, z, p["stage2_steps"], p["batch_size"], p["stage2_lr"],
                            p["seed"], progress=self.progress)
        self.mixture.eval()
        self.info = {"rows": len(df), "features": int(rows.shape[1]), "transform_seconds": t_transform,
                     "stage1_seconds": summary["wall_seconds"], "stage1_final": summary["final_terms"],
                     "prior_seconds": t_prior, "stage2_seconds": time.perf_counter() - t1 - t_prior,
                     "stage2_nll_per_dim": losses[-1] if losses else None,
                     "fit_seconds": time.perf_counter() - t0}
        self.info["privacy"] = self._privacy_check(df, held) if held is not None else None
        return self

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
