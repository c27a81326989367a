"""The table transformer of CTGAN/TVAE (mode-specific normalisation), with missing values and types.

    tt = TableTransformer(column_types={"zip": "categorical"}).fit(df)
    x = tt.transform(df)                   # float32 (rows, tt.output_dim)
    back = tt.inverse_transform(x)         # the same columns, dtypes and missing values
    tt.spans                               # [Span(name, kind, start, width, column, gate_start, gate_width)]

Per column kind:
- continuous (floats), integer (rounded back, clipped to the training range), datetime (as
  nanoseconds, restored to datetime64 of the original unit): standardised, then a variational
  Gaussian mixture (sklearn BayesianGaussianMixture, up to 10 modes, modes of weight < 0.005 dropped,
  as CTGAN/TVAE). A value becomes alpha = (x - mu_m) / (4 sigma_m) clipped to [-1, 1] (one
  "continuous" span of width 1) and the one-hot of its mode m (a "softmax" span). The mode is the
  most probable one (CTGAN samples it; the arg max makes transform deterministic and exactly
  invertible inside +-4 sigma).
- categorical and boolean: one "softmax" span over every category seen in fit.
- constant (one distinct value): no span; restored verbatim.
A column with missing values also gets a width-2 "softmax" span `<col>.missing` (present, missing);
on a missing row the column's own spans are all zero, so the likelihood ignores them there (the
alpha span is gated by its mode span: `gate_start`, `gate_width`).

Types are inferred: bool dtype -> boolean; datetime64, or strings that all parse as dates ->
datetime; integers (or floats holding only whole numbers) -> integer, or categorical when they
have at most `max_discrete` distinct values; other numbers -> continuous; everything else ->
categorical. `column_types` overrides any column.

Saved as JSON (layout, categories, dtypes) plus safetensors (the mixture parameters); never pickled.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from untwine.errors import DataError
from untwine.io import atomic_write_bytes

KINDS = ("continuous", "integer", "datetime", "categorical", "boolean")
NUMERIC_KINDS = ("continuous", "integer", "datetime")
MAX_MODES = 10
WEIGHT_THRESHOLD = 0.005
ALPHA_SCALE = 4.0
FORMAT_VERSION = 1
# In one dimension a "diag" covariance is the "full" one (sklearn's variational updates agree to
# 1e-11) at a third of the cost: the mode fits were a third of a fit on KDD Census-Income.
MODE_COVARIANCE = "diag"


@dataclass(frozen=True)
class Span:
    """A block of the transformed row. kind "continuous": alpha values (Gaussian); "softmax": a
    one-hot block (categorical). `gate_start`/`gate_width` (-1/0 when none): the span whose target
    sum says whether this continuous span is observed (its mode span)."""

    name: str
    kind: str
    start: int
    width: int
    column: str
    gate_start: int = -1
    gate_width: int = 0

    @property
    def stop(self) -> int:
        return self.start + self.width


def _python(value):
    """A JSON-able Python scalar for a category (numpy scalars unwrapped, timestamps as text)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _is_whole(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def _textual(series: pd.Series) -> bool:
    return series.dtype == object or pd.api.types.is_string_dtype(series)


def _parses_as_dates(series: pd.Series) -> bool:
    """Strings that all read as dates (CSV datetime columns arrive as text)."""
    values = series.dropna()
    if values.empty or not all(isinstance(v, str) for v in values.iloc[:100]):
        return False
    values = values.astype(str)
    if not values.str.contains(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4}", regex=True).all():
        return False
    try:
        pd.to_datetime(values, format="mixed")
    except (ValueError, TypeError, OverflowError):
        return False
    return True


class TableTransformer:
    """fit / transform / inverse_transform between DataFrames and float32 rows (see module doc)."""

    def __init__(self, column_types: dict[str, str] | None = None, max_modes: int = MAX_MODES,
                 weight_threshold: float = WEIGHT_THRESHOLD, max_discrete: int = 10, seed: int = 0):
        self.column_types = dict(column_types or {})
        for col, kind in self.column_types.items():
            if kind not in KINDS:
                raise DataError(f"column_types[{col!r}]={kind!r}; expected one of {KINDS}")
        self.max_modes, self.weight_threshold = int(max_modes), float(weight_threshold)
        self.max_discrete, self.seed = int(max_discrete), int(seed)
        self.columns: list[dict] = []
        self.spans: list[Span] = []
        self.modes: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # column -> (means, stds) standardised

    # ---- fit ------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return bool(self.columns)

    @property
    def output_dim(self) -> int:
        return self.spans[-1].stop if self.spans else 0

    @property
    def column_names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    def kind_of(self, column: str) -> str:
        return self._column(column)["kind"]

    def _column(self, name: str) -> dict:
        for c in self.columns:
            if c["name"] == name:
                return c
        raise DataError(f"unknown column {name!r}; the table has {self.column_names}")

    @staticmethod
    def check_frame(df, what: str = "the table") -> None:
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"{what} must be a pandas DataFrame, got {type(df).__name__}; "
                            f"wrap it with pandas.DataFrame(...) or read it with pandas.read_csv")
        if df.shape[0] == 0 or df.shape[1] == 0:
            raise DataError(f"{what} is empty ({df.shape[0]} rows, {df.shape[1]} columns); give at least one row "
                            f"and one column")
        if not df.columns.is_unique:
            dup = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
            raise DataError(f"{what} has duplicate column names {dup}; rename them")

    def _infer_kind(self, name: str, series: pd.Series) -> str:
        if name in self.column_types:
            return self.column_types[name]
        values = series.dropna()
        if pd.api.types.is_bool_dtype(series) or (series.dtype == object and len(values)
                                                  and values.map(lambda v: isinstance(v, (bool, np.bool_))).all()):
            return "boolean"
        if pd.api.types.is_datetime64_any_dtype(series):
            return "datetime"
        if pd.api.types.is_numeric_dtype(series) and not isinstance(series.dtype, pd.CategoricalDtype):
            numbers = values.to_numpy(dtype=np.float64)
            if _is_whole(numbers):
                return "categorical" if values.nunique() <= self.max_discrete else "integer"
            return "continuous"
        if _textual(series) and _parses_as_dates(series):
            return "datetime"
        return "categorical"

    def fit(self, df: pd.DataFrame) -> "TableTransformer":
        self.check_frame(df)
        unknown = sorted(set(self.column_types) - set(map(str, df.columns)))
        if unknown:
            raise DataError(f"column_types names columns {unknown} that the table does not have (its columns: "
                            f"{[str(c) for c in df.columns]}); fix the names or remove them")
        empty = [str(c) for c in df.columns if df[c].isna().all()]
        if empty:  # before any fitting work
            raise DataError(f"column {empty[0]!r} is entirely missing ({len(df)} rows){' (also: ' + str(empty[1:]) + ')' if len(empty) > 1 else ''}; "
                            f"drop it from the table")
        self.columns, self.spans, self.modes = [], [], {}
        start = 0
        for col in df.columns:
            name, series = str(col), df[col]
            missing = series.isna().to_numpy()
            kind = self._infer_kind(name, series)
            info = {"name": name, "kind": kind, "dtype": str(series.dtype), "has_missing": bool(missing.any())}
            values = series[~missing]
            if kind in NUMERIC_KINDS:
                numbers = self._numbers(name, kind, values, info)
                if np.unique(numbers).size == 1:
                    info.update(kind="constant", value=_python(values.iloc[0]), value_kind=kind)
                else:
                    info["range"] = [float(numbers.min()), float(numbers.max())]
                    info["shift"], info["scale"] = float(numbers.mean()), float(numbers.std())
                    means, stds = self._fit_modes(name, (numbers - info["shift"]) / info["scale"])
                    self.modes[name] = (means, stds)
                    self.spans.append(Span(f"{name}.alpha", "continuous", start, 1, name, start + 1, len(means)))
                    self.spans.append(Span(f"{name}.mode", "softmax", start + 1, len(means), name))
                    start += 1 + len(means)
            else:
                categories = pd.unique(values.to_numpy(dtype=object))
                try:
                    categories = sorted(categories)
                except TypeError:  # mixed types: keep the order of appearance
                    categories = list(categories)
                if len(categories) == 1:
                    info.update(kind="constant", value=_python(categories[0]), value_kind=kind)
                else:
                    info["categories"] = [_python(v) for v in categories]
                    if isinstance(series.dtype, pd.CategoricalDtype):
                        info["dtype_categories"] = [_python(v) for v in series.dtype.categories]
                    self.spans.append(Span(f"{name}.category", "softmax", start, len(categories), name))
                    start += len(categories)
            if info["has_missing"]:
                self.spans.append(Span(f"{name}.missing", "softmax", start, 2, name))
                start += 2
            self.columns.append(info)
        return self

    def _numbers(self, name: str, kind: str, values: pd.Series, info: dict) -> np.ndarray:
        """The float64 numbers of a numeric column (datetimes as nanoseconds since the epoch)."""
        if kind == "datetime":
            try:
                stamps = values if pd.api.types.is_datetime64_any_dtype(values) else \
                    pd.to_datetime(values, format="mixed")
            except (ValueError, TypeError) as e:
                raise DataError(f"column {name!r} is typed datetime but does not parse as dates ({e}); fix the "
                                f"values or type it as categorical") from e
            if getattr(stamps.dt, "tz", None) is not None:
                info["tz"] = str(stamps.dt.tz)
                stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
            info["unit"] = np.datetime_data(stamps.to_numpy().dtype)[0]
            return stamps.to_numpy().astype("datetime64[ns]").astype(np.int64).astype(np.float64)
        try:
            return values.to_numpy(dtype=np.float64)
        except (ValueError, TypeError) as e:
            raise DataError(f"column {name!r} is typed {kind} but holds non-numbers ({e}); fix the values or "
                            f"type it as categorical (column_types={{{name!r}: 'categorical'}})") from e

    def _fit_modes(self, name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import BayesianGaussianMixture
        import warnings

        n_modes = int(min(self.max_modes, np.unique(z).size))
        bgm = BayesianGaussianMixture(n_components=n_modes, weight_concentration_prior_type="dirichlet_process",
                                      weight_concentration_prior=0.001, max_iter=100, n_init=1,
                                      covariance_type=MODE_COVARIANCE, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            bgm.fit(z.reshape(-1, 1))
        keep = bgm.weights_ > self.weight_threshold
        if not keep.any():
            keep = bgm.weights_ == bgm.weights_.max()
        means = bgm.means_[keep, 0]
        stds = np.sqrt(bgm.covariances_[keep].reshape(-1))
        order = np.argsort(means)
        return means[order].astype(np.float64), stds[order].astype(np.float64)

    # ---- transform --------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not self.fitted:
            raise DataError("the transformer is not fitted; call fit(df) first")

    def transform(self, df: pd.DataFrame, dtype=np.float32) -> np.ndarray:
        """The rows of `df` as (rows, output_dim) `dtype` (float64 keeps datetimes to the second)."""
        self._check_fitted()
        self.check_frame(df)
        missing_cols = [c for c in self.column_names if c not in set(map(str, df.columns))]
        if missing_cols:
            raise DataError(f"the table lacks columns {missing_cols} that the transformer was fitted on; add them")
        frame = df.rename(columns=str)
        out = np.zeros((len(frame), self.output_dim), dtype=dtype)
        spans = {s.name: s for s in self.spans}
        for info in self.columns:
            name, series = info["name"], frame[info["name"]]
            missing = series.isna().to_numpy()
            if missing.any() and not info["has_missing"]:
                raise DataError(f"column {name!r} has missing values but had none when the transformer was fitted; "
                                f"fill them or refit on data with missing values")
            present = ~missing
            if info["has_missing"]:
                out[np.arange(len(frame)), spans[f"{name}.missing"].start + missing.astype(int)] = 1.0
            if info["kind"] == "constant":
                continue
            values = series[present]
            if info["kind"] in NUMERIC_KINDS:
                z = (self._numbers(name, info["kind"], values, dict(info)) - info["shift"]) / info["scale"]
                means, stds = self.modes[name]
                mode = self._most_probable_mode(z, means, stds)
                alpha = np.clip((z - means[mode]) / (ALPHA_SCALE * stds[mode]), -1.0, 1.0)
                a, m = spans[f"{name}.alpha"], spans[f"{name}.mode"]
                rows = np.flatnonzero(present)
                out[rows, a.start] = alpha
                out[rows, m.start + mode] = 1.0
            else:
                cats = info["categories"]
                index = {c: i for i, c in enumerate(cats)}
                codes = [index.get(_python(v), -1) for v in values.to_numpy(dtype=object)]
                unseen = sorted({str(v) for v, c in zip(values, codes) if c < 0})
                if unseen:
                    raise DataError(f"column {name!r} holds categories {unseen[:5]} unseen when the transformer was "
                                    f"fitted; refit on data that contains them")
                s = spans[f"{name}.category"]
                out[np.flatnonzero(present), s.start + np.asarray(codes, dtype=int)] = 1.0
        return out

    @staticmethod
    def _most_probable_mode(z: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
        # equal-weight Gaussian responsibilities would favour wide modes; use the density (log) directly
        log_p = -0.5 * ((z[:, None] - means[None]) / stds[None]) ** 2 - np.log(stds[None])
        return log_p.argmax(1)

    # ---- inverse ----------------------------------------------------------------------------
    def inverse_transform(self, x) -> pd.DataFrame:
        """Rows (decoded probabilities, samples or one-hots) back to a DataFrame: every softmax span
        is read by its arg max, alpha is clipped to [-1, 1]."""
        self._check_fitted()
        x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.output_dim:
            raise DataError(f"inverse_transform got an array of shape {x.shape}; expected (rows, {self.output_dim})")
        spans = {s.name: s for s in self.spans}
        columns = {}
        for info in self.columns:
            name, n = info["name"], len(x)
            missing = np.zeros(n, dtype=bool)
            if info["has_missing"]:
                s = spans[f"{name}.missing"]
                missing = x[:, s.start:s.stop].argmax(1) == 1
            kind = info["kind"]
            if kind == "constant":
                columns[name] = self._restore(info, np.full(n, info["value"], dtype=object), missing,
                                              info["value_kind"])
                continue
            if kind in NUMERIC_KINDS:
                a, m = spans[f"{name}.alpha"], spans[f"{name}.mode"]
                means, stds = self.modes[name]
                mode = x[:, m.start:m.stop].argmax(1)
                alpha = np.clip(x[:, a.start], -1.0, 1.0)
                numbers = (alpha * ALPHA_SCALE * stds[mode] + means[mode]) * info["scale"] + info["shift"]
                columns[name] = self._restore(info, numbers, missing, kind)
            else:
                s = spans[f"{name}.category"]
                cats = np.asarray(info["categories"] + [None], dtype=object)[:-1]
                columns[name] = self._restore(info, cats[x[:, s.start:s.stop].argmax(1)], missing, kind)
        return pd.DataFrame(columns)

    @staticmethod
    def _restore(info: dict, values: np.ndarray, missing: np.ndarray, kind: str) -> pd.Series:
        """Values of one column in its original dtype, missing rows as NaN / None / NaT."""
        dtype = info["dtype"]
        if kind in ("continuous", "integer"):
            numbers = np.asarray(values, dtype=np.float64)
            if kind == "integer" and "range" in info:
                numbers = np.clip(np.round(numbers), *info["range"])
            numbers[missing] = np.nan
            series = pd.Series(numbers)
            try:
                return series.astype(dtype) if not missing.any() or dtype.startswith(("float", "Int", "Float")) \
                    else series
            except (TypeError, ValueError):
                return series
        if kind == "datetime":
            if "range" in info:
                ns = np.clip(np.round(np.asarray(values, dtype=np.float64)), *info["range"])
                stamps = ns.astype(np.int64).astype("datetime64[ns]")
            else:  # a constant datetime column
                stamps = np.full(len(values), np.datetime64(pd.Timestamp(info["value"]).to_datetime64(), "ns"))
            unit = info.get("unit", "ns")
            stamps = stamps.astype(f"datetime64[{unit}]") if unit in ("s", "ms", "us", "ns") else stamps
            series = pd.Series(stamps)
            series[missing] = pd.NaT
            if "tz" in info:
                series = series.dt.tz_localize("UTC").dt.tz_convert(info["tz"])
            return series
        # categorical / boolean
        values = np.asarray(values, dtype=object).copy()
        values[missing] = None
        if "dtype_categories" in info:
            return pd.Series(pd.Categorical(values, categories=info["dtype_categories"]))
        series = pd.Series(values, dtype=object)
        if missing.any():
            if dtype.startswith("float"):
                return series.astype("float64")
            return series
        try:
            return series.astype(dtype)
        except (TypeError, ValueError):
            return series

    # ---- conditions ---------------------------------------------------------------------------
    def encode_condition(self, column: str, value) -> dict[int, float]:
        """{feature index: value} that every row meeting `column == value` has in the transformed
        space (the column's spans and its missing indicator); None/NaN asks for a missing value.
        A categorical value may be given as text ("3" for the category 3, as a command line does)."""
        self._check_fitted()
        info = self._column(column)
        if "categories" in info and value is not None and _python(value) not in info["categories"]:
            by_text = {str(c): c for c in info["categories"]}
            if str(value) not in by_text:
                shown = info["categories"][:20]
                raise DataError(f"condition {column}={value!r}: not a category of {column!r} (categories: {shown}"
                                f"{' ...' if len(info['categories']) > 20 else ''})")
            value = by_text[str(value)]
        if info["kind"] == "constant" and value is not None and str(value) != str(info["value"]):
            raise DataError(f"condition {column}={value!r}: column {column!r} is constant ({info['value']!r})")
        row = {c["name"]: [self._example(c)] for c in self.columns}
        row[column] = [value]
        encoded = self.transform(pd.DataFrame(row, dtype=object), dtype=np.float64)[0]
        return {i: float(encoded[i]) for s in self.spans if s.column == column for i in range(s.start, s.stop)}

    @staticmethod
    def _example(info: dict):
        if info["kind"] == "constant":
            return info["value"]
        if "categories" in info:
            return info["categories"][0]
        lo = info["range"][0]
        if info["kind"] == "datetime":
            return pd.Timestamp(int(lo))
        return lo

    # ---- save / load ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT_VERSION, "column_types": self.column_types, "max_modes": self.max_modes,
                "weight_threshold": self.weight_threshold, "max_discrete": self.max_discrete, "seed": self.seed,
                "columns": self.columns, "spans": [asdict(s) for s in self.spans]}

    def save(self, directory: str | os.PathLike, prefix: str = "transformer") -> None:
        from safetensors.numpy import save as save_arrays
        self._check_fitted()
        directory = Path(directory)
        arrays = {}
        for name, (means, stds) in self.modes.items():
            arrays[f"{name}/means"], arrays[f"{name}/stds"] = means, stds
        atomic_write_bytes(directory / f"{prefix}.json", json.dumps(self.to_dict(), indent=1).encode())
        atomic_write_bytes(directory / f"{prefix}.safetensors", save_arrays(arrays) if arrays else save_arrays(
            {"_empty": np.zeros(0)}))

    @classmethod
    def load(cls, directory: str | os.PathLike, prefix: str = "transformer") -> "TableTransformer":
        from safetensors.numpy import load_file
        directory = Path(directory)
        meta_path, arrays_path = directory / f"{prefix}.json", directory / f"{prefix}.safetensors"
        for p in (meta_path, arrays_path):
            if not p.is_file():
                raise DataError(f"{str(p)!r} is missing: {str(directory)!r} holds no saved table transformer")
        try:
            meta = json.loads(meta_path.read_text())
            arrays = load_file(str(arrays_path))
        except (ValueError, OSError) as e:
            raise DataError(f"the saved transformer in {str(directory)!r} is corrupt ({e}); fit and save it again") from e
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{str(meta_path)!r} has format {meta.get('format')!r}; this untwine reads "
                            f"{FORMAT_VERSION}: refit the model")
        tt = cls(meta["column_types"], meta["max_modes"], meta["weight_threshold"], meta["max_discrete"],
                 meta["seed"])
        tt.columns, tt.spans = meta["columns"], [Span(**s) for s in meta["spans"]]
        tt.modes = {c["name"]: (arrays[f"{c['name']}/means"], arrays[f"{c['name']}/stds"])
                    for c in tt.columns if c["kind"] in NUMERIC_KINDS}
        return tt
