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

Types are inferred: bool dtype -> boolean; datetime64, or strings that all parse as dates in ONE
format (`DATE_FORMATS`; a column that reads in two formats, such as %d/%m/%Y and %m/%d/%Y, is refused
with a message naming `formats`, --date-format and --type) -> datetime; numbers with at most
`max_discrete` distinct values -> categorical; other integers (or floats holding only whole numbers)
-> integer; other numbers -> continuous; near-unique text, or unique integers named like a key or
counting rows -> "id" (a key: generated as fresh values, never copied from the table); everything
else -> categorical. `column_types` and `formats` override any column (`metadata()` writes them all).

Numeric columns (issue 24): a value holding at least `POINT_MASS` (half) of the rows (the zeros
of a zero-inflated count) is a mode of its own ("points", before the mixture's modes in the mode span),
decoded to exactly that value; the mixture is fitted to the other values, standardised robustly
(median, IQR) with the prior scale fixed to 1, so that a few outliers neither widen the main mode
nor set the scale; a column with few distinct values, each seen several times, keeps its "support"
and every decoded value is moved to the nearest value of it; decoded values stay in the training
range (`enforce_range`) and are rounded to the decimals the training values have
(`enforce_rounding`), as SDV's enforce_min_max_values and enforce_rounding do by default.
Datetimes keep their resolution (a date-only column decodes to dates) and text dates their format.

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

KINDS = ("continuous", "integer", "datetime", "categorical", "boolean", "id")
NUMERIC_KINDS = ("continuous", "integer", "datetime")
MAX_MODES = 10
WEIGHT_THRESHOLD = 0.005
ALPHA_SCALE = 4.0
FORMAT_VERSION = 1
METADATA_FORMAT = "untwine-table-metadata/1"
# A value on at least this share of a numeric column's rows is a mode of its own: the zeros of a
# zero-inflated count. At 0.1 Adult's education-num (9, 10, 13) and hours-per-week (40) became
# points too (one-hots stage 1 draws independently given z, where alphas are drawn by stage 2 given
# every category), with TSTR AUC 0.901 / 0.898 on seeds 0 / 1 against 0.904 / 0.904 before; their
# support keeps those values exact without it.
POINT_MASS = 0.5
SUPPORT_MAX = 200       # a numeric column with at most this many distinct values ...
SUPPORT_REPEATS = 4     # ... each seen this many times on average, decodes onto those values
MAX_DECIMALS = 10       # values with more decimals than this are not rounded
ID_SHARE = 0.95         # text with this share of distinct values is a key, not a category
ID_MIN_ROWS = 20
# One format per column, tried in this order; a column that parses in two with different dates is
# ambiguous (day first or month first) and refused. Full-match parsing: "2020-01-01 10:00" does not
# read as "%Y-%m-%d".
DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f",
                "%Y-%m-%dT%H:%M:%S.%f", "%Y/%m/%d", "%Y/%m/%d %H:%M:%S", "%d/%m/%Y", "%m/%d/%Y",
                "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%d.%m.%Y",
                "%d-%m-%Y", "%m-%d-%Y", "%d/%m/%y", "%m/%d/%y")
# the resolutions a datetime column is rounded back to: the coarsest that divides every training value
_RESOLUTIONS_NS = (("D", 86_400 * 10 ** 9), ("h", 3_600 * 10 ** 9), ("min", 60 * 10 ** 9), ("s", 10 ** 9),
                   ("ms", 10 ** 6), ("us", 10 ** 3), ("ns", 1))
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


def _looks_like_dates(values: pd.Series) -> bool:
    if values.empty or not all(isinstance(v, str) for v in values.iloc[:100]):
        return False
    return bool(values.astype(str).str.contains(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}",
                                                regex=True).all())


def _parse(values: pd.Series, fmt: str):
    """values parsed with exactly `fmt`, or None when one does not match it."""
    try:
        return pd.to_datetime(values, format=fmt)
    except (ValueError, TypeError, OverflowError):
        return None


def date_format(name: str, series: pd.Series) -> str | None:
    """The one format of `DATE_FORMATS` every value of a text column parses in; None when the column
    does not hold dates. Two formats that read the values as different dates (01/08/2020: 1 August or
    8 January) are refused, and so are dates written in several formats: a per-row guess read
    "01/08/2020" as January and "14/02/2021" as February in one column."""
    values = series.dropna()
    if not _looks_like_dates(values):
        return None
    values = values.astype(str)
    found = {}
    for fmt in DATE_FORMATS:
        parsed = _parse(values, fmt)
        if parsed is not None and not any(parsed.equals(other) for other in found.values()):
            found[fmt] = parsed
    if len(found) > 1:
        fmts = list(found)
        raise DataError(f"column {name!r} holds dates that read in several formats ({', '.join(fmts)}: "
                        f"e.g. {values.iloc[0]!r}); name its format: formats={{{name!r}: {fmts[0]!r}}}, "
                        f"`untwine tabular fit --date-format '{name}={fmts[0]}'` or \"format\" in the metadata file; "
                        f"or keep it as text with --type {name}=categorical")
    if found:
        return next(iter(found))
    if _parse(values, "ISO8601") is not None:
        return "ISO8601"
    if _parse(values, "mixed") is not None:
        raise DataError(f"column {name!r} holds dates written in more than one format (e.g. {values.iloc[0]!r} and "
                        f"{values.iloc[-1]!r}); write them in one format, or name one with --date-format "
                        f"'{name}=FORMAT' (formats={{{name!r}: ...}}), or keep the column as text with "
                        f"--type {name}=categorical")
    return None


def _decimals(values: np.ndarray) -> int | None:
    """The fewest decimals that write every value exactly (None: more than MAX_DECIMALS, or values
    too large for float64 to hold that many). The tolerance is absolute in units of the last
    decimal: a relative one let any value of 100 pass at 7 decimals."""
    for d in range(MAX_DECIMALS + 1):
        scaled = values * 10.0 ** d
        if np.abs(scaled).max() > 1e12:
            return None
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-4):
            return d
    return None


# "user_id", "ID", "id_user", "order key", "userId" (camel case only: "paid" and "valid" are not keys)
_KEY_NAME = r"(?i:(^|[_\W])(id|key|uuid|guid)$|^(id|key|uuid|guid)([_\W]|$))|[a-z]Id$"


def _is_key(name: str, values: pd.Series, textual: bool, whole: bool) -> bool:
    """Near-unique text (nothing to learn from a category seen once), or unique integers named like a
    key or counting rows: copying one would copy its row, so it is generated fresh."""
    n = len(values)
    if n < ID_MIN_ROWS:
        return False
    distinct = values.nunique()
    if textual:
        return distinct >= ID_SHARE * n
    if whole and distinct == n:
        import re
        numbers = values.to_numpy(dtype=np.float64)
        # a row counter: 0..n-1 or 1..n (a unique year per row, 1970..2019, stays a number)
        return bool(re.search(_KEY_NAME, name)) or (numbers.min() in (0, 1) and numbers.max() - numbers.min() + 1 == n)
    return False


class TableTransformer:
    """fit / transform / inverse_transform between DataFrames and float32 rows (see module doc)."""

    def __init__(self, column_types: dict[str, str] | None = None, max_modes: int = MAX_MODES,
                 weight_threshold: float = WEIGHT_THRESHOLD, max_discrete: int = 10, seed: int = 0,
                 formats: dict[str, str] | None = None, enforce_range: bool = True, enforce_rounding: bool = True):
        self.column_types = dict(column_types or {})
        for col, kind in self.column_types.items():
            if kind not in KINDS:
                raise DataError(f"column_types[{col!r}]={kind!r}; expected one of {KINDS}")
        self.formats = dict(formats or {})
        self.max_modes, self.weight_threshold = int(max_modes), float(weight_threshold)
        self.max_discrete, self.seed = int(max_discrete), int(seed)
        self.enforce_range, self.enforce_rounding = bool(enforce_range), bool(enforce_rounding)
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
            whole = _is_whole(numbers)
            if values.nunique() <= self.max_discrete:   # a small support, whole or not: its values are categories
                return "categorical"
            if _is_key(name, values, False, whole):
                return "id"
            return "integer" if whole else "continuous"
        if _textual(series):
            if name in self.formats or date_format(name, series) is not None:
                return "datetime"
            if _is_key(name, values, True, False):
                return "id"
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
            if kind == "id":
                info.update(self._key_info(name, values))
            elif kind in NUMERIC_KINDS:
                if kind == "datetime" and _textual(series):
                    info["format"] = self.formats.get(name) or date_format(name, values)
                numbers = self._numbers(name, kind, values, info)
                if np.unique(numbers).size == 1:
                    info.update(kind="constant", value=_python(values.iloc[0]), value_kind=kind)
                else:
                    self._numeric_info(name, kind, numbers, info)
                    n_points, (means, stds) = len(info["points"]), self.modes[name]
                    width = n_points + len(means)
                    # alpha is observed only on the mixture's modes: a point decodes to its value whatever alpha
                    gate = (start + 1 + n_points, len(means)) if len(means) else (start + 1, width)
                    self.spans.append(Span(f"{name}.alpha", "continuous", start, 1, name, *gate))
                    self.spans.append(Span(f"{name}.mode", "softmax", start + 1, width, name))
                    start += 1 + width
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

    def _numeric_info(self, name: str, kind: str, numbers: np.ndarray, info: dict) -> None:
        """Range, point masses, robust standardisation, mixture modes, support and decimals of a
        numeric column (see the module doc)."""
        info["range"] = [float(numbers.min()), float(numbers.max())]
        distinct, counts = np.unique(numbers, return_counts=True)
        points = distinct[counts >= POINT_MASS * len(numbers)]
        rest = numbers[~np.isin(numbers, points)]
        if np.unique(rest).size <= 1:   # nothing left to spread: the last value is a point too
            points, rest = distinct, rest[:0]
        info["points"] = [float(v) for v in points]
        if rest.size:
            q1, median, q3 = np.percentile(rest, [25, 50, 75])
            scale = (q3 - q1) / 1.349 or float(rest.std()) or 1.0   # IQR of a normal is 1.349 sd
            info["shift"], info["scale"] = float(median), float(scale)
            info["spread_range"] = [float(rest.min()), float(rest.max())]
            self.modes[name] = self._fit_modes(name, (rest - info["shift"]) / info["scale"])
        else:
            info["shift"], info["scale"] = 0.0, 1.0
            self.modes[name] = (np.zeros(0), np.zeros(0))
        if kind != "datetime":
            # the values off the points must repeat: a zero-inflated column whose other values are each
            # seen once would otherwise copy them
            spread = np.unique(rest).size
            if distinct.size <= SUPPORT_MAX and spread * SUPPORT_REPEATS <= rest.size:
                info["support"] = [float(v) for v in distinct]
            if kind == "continuous":
                info["decimals"] = _decimals(numbers)
        else:
            ns = numbers.astype(np.int64)
            info["resolution"] = next(u for u, step in _RESOLUTIONS_NS if np.all(ns % step == 0))

    def avoid_keys(self, df: pd.DataFrame) -> None:
        """Fresh keys that avoid every key of `df` too (the rows a fit held out: a fresh key equal to
        one of them would look copied)."""
        for info in self.columns:
            if info["kind"] == "id" and info["name"] in df.columns:
                values = df[info["name"]].dropna()
                if info["key"] == "integer" and pd.api.types.is_numeric_dtype(values) and len(values):
                    info["start"] = max(info["start"], int(values.max()) + 1)
                elif info["key"] == "text":
                    while values.astype(str).str.startswith(info["prefix"]).any():
                        info["prefix"] = "x" + info["prefix"]

    @staticmethod
    def _key_info(name: str, values: pd.Series) -> dict:
        """How fresh keys are made: integers above the largest training key; text as a prefix that
        no training key starts with, and a counter."""
        if pd.api.types.is_numeric_dtype(values):
            return {"key": "integer", "start": int(values.max()) + 1}
        text = values.astype(str)
        prefix = "synthetic-"
        while text.str.startswith(prefix).any():
            prefix = "x" + prefix
        return {"key": "text", "prefix": prefix}

    def _numbers(self, name: str, kind: str, values: pd.Series, info: dict, lenient: bool = False) -> np.ndarray:
        """The float64 numbers of a numeric column (datetimes as nanoseconds since the epoch; text in
        the column's format, or any format when `lenient`, as a condition's value may be written)."""
        if kind == "datetime":
            fmt = info.get("format")
            try:
                if pd.api.types.is_datetime64_any_dtype(values):
                    stamps = values
                elif fmt is None:
                    stamps = pd.to_datetime(values, format="mixed")
                else:
                    stamps = _parse(values.astype(str), fmt)
                    if stamps is None and lenient:
                        stamps = pd.to_datetime(values.astype(str), format="mixed")
                    if stamps is None:
                        bad = [v for v in values.astype(str) if _parse(pd.Series([v]), fmt) is None][:3]
                        raise ValueError(f"{bad} do not match its format {fmt!r}")
            except (ValueError, TypeError) as e:
                raise DataError(f"column {name!r} is typed datetime but does not parse as dates ({e}); fix the "
                                f"values, name the format (--date-format '{name}=FORMAT') or type it as "
                                f"categorical (--type {name}=categorical)") from e
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
        # The priors' location and scale are the robust ones (0 and 1 after the median/IQR scaling)
        # rather than sklearn's defaults, the sample mean and variance: three values of 1e7 in a
        # N(100, 10) column made the prior variance, and so the main mode's, 225,240^2.
        bgm = BayesianGaussianMixture(n_components=n_modes, weight_concentration_prior_type="dirichlet_process",
                                      weight_concentration_prior=0.001, max_iter=100, n_init=1,
                                      covariance_type=MODE_COVARIANCE, random_state=self.seed,
                                      mean_prior=[0.0],
                                      covariance_prior=[1.0] if MODE_COVARIANCE == "diag" else [[1.0]])
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
            if info["kind"] in ("constant", "id"):
                continue
            values = series[present]
            if info["kind"] in NUMERIC_KINDS:
                numbers = self._numbers(name, info["kind"], values, dict(info), lenient=self._lenient)
                mode, alpha = self._modes_and_alpha(name, info, numbers)
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

    _lenient = False   # set while a condition's value is encoded

    def _modes_and_alpha(self, name: str, info: dict, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per value: its index in the mode span (points first) and alpha (0 on a point)."""
        points = np.asarray(info.get("points", []), dtype=np.float64)
        means, stds = self.modes[name]
        z = (numbers - info["shift"]) / info["scale"]
        mode, alpha = np.zeros(len(numbers), dtype=int), np.zeros(len(numbers))
        on_point = np.isin(numbers, points)
        if len(means):
            m = self._most_probable_mode(z[~on_point], means, stds)
            mode[~on_point] = len(points) + m
            alpha[~on_point] = np.clip((z[~on_point] - means[m]) / (ALPHA_SCALE * stds[m]), -1.0, 1.0)
        else:   # only points: a value between them goes to the nearest
            on_point[:] = True
        if on_point.any():
            mode[on_point] = np.abs(numbers[on_point, None] - points[None]).argmin(1)
        return mode, alpha

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
            if kind == "id":
                columns[name] = self._restore(info, self._fresh_keys(info, n), missing, kind)
                continue
            if kind in NUMERIC_KINDS:
                a, m = spans[f"{name}.alpha"], spans[f"{name}.mode"]
                columns[name] = self._restore(info, self._decode_numbers(name, info, x[:, m.start:m.stop].argmax(1),
                                                                         x[:, a.start]), missing, kind)
            else:
                s = spans[f"{name}.category"]
                cats = np.asarray(info["categories"] + [None], dtype=object)[:-1]
                columns[name] = self._restore(info, cats[x[:, s.start:s.stop].argmax(1)], missing, kind)
        return pd.DataFrame(columns)

    def _decode_numbers(self, name: str, info: dict, mode: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Numbers from the mode and alpha: a point's exact value, else the mixture's; then moved onto
        the support, into the training range and rounded (module doc)."""
        points = np.asarray(info.get("points", []), dtype=np.float64)
        means, stds = self.modes[name]
        on_point = mode < len(points)
        m = np.clip(mode - len(points), 0, max(len(means) - 1, 0))
        numbers = np.empty(len(mode))
        if len(means):
            numbers[:] = (np.clip(alpha, -1.0, 1.0) * ALPHA_SCALE * stds[m] + means[m]) * info["scale"] + info["shift"]
            if self.enforce_range and "spread_range" in info:   # the mixture's values stay off the points
                numbers = np.clip(numbers, *info["spread_range"])
        numbers[on_point] = points[mode[on_point]]
        if "support" in info:   # only values that occur: ordinal codes and counts stay on their values
            support = np.asarray(info["support"])
            i = np.clip(np.searchsorted(support, numbers), 1, len(support) - 1)
            numbers = np.where(numbers - support[i - 1] <= support[i] - numbers, support[i - 1], support[i])
        if self.enforce_range:
            numbers = np.clip(numbers, *info["range"])
        if self.enforce_rounding and info.get("decimals") is not None:
            numbers = np.round(numbers, info["decimals"])
        return numbers

    @staticmethod
    def _fresh_keys(info: dict, n: int) -> np.ndarray:
        if info["key"] == "integer":
            return np.arange(info["start"], info["start"] + n, dtype=np.int64)
        return np.asarray([f"{info['prefix']}{i}" for i in range(n)], dtype=object)

    @staticmethod
    def _restore(info: dict, values: np.ndarray, missing: np.ndarray, kind: str) -> pd.Series:
        """Values of one column in its original dtype, missing rows as NaN / None / NaT."""
        dtype = info["dtype"]
        if kind == "id" and info["key"] == "integer":
            kind = "integer"
        if kind in ("continuous", "integer"):
            numbers = np.asarray(values, dtype=np.float64)
            if kind == "integer":
                numbers = np.round(numbers)
            numbers[missing] = np.nan
            series = pd.Series(numbers)
            try:
                return series.astype(dtype) if not missing.any() or dtype.startswith(("float", "Int", "Float")) \
                    else series
            except (TypeError, ValueError):
                return series
        if kind == "datetime":
            if "range" in info:
                ns = np.round(np.asarray(values, dtype=np.float64))
                step = dict(_RESOLUTIONS_NS).get(info.get("resolution", "ns"), 1)
                ns = np.round(ns / step) * step   # a date-only column decodes to dates, seconds to seconds
                stamps = ns.astype(np.int64).astype("datetime64[ns]")
            else:  # a constant datetime column
                stamps = np.full(len(values), np.datetime64(pd.Timestamp(info["value"]).to_datetime64(), "ns"))
            unit = info.get("unit", "ns")
            stamps = stamps.astype(f"datetime64[{unit}]") if unit in ("s", "ms", "us", "ns") else stamps
            series = pd.Series(stamps)
            series[missing] = pd.NaT
            if "tz" in info:
                series = series.dt.tz_localize("UTC").dt.tz_convert(info["tz"])
            fmt = info.get("format")
            if fmt and fmt != "ISO8601":   # text dates come back as text, in their format
                text = series.dt.strftime(fmt).astype(object)
                text[missing] = None
                return text
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
    def condition_value(self, column: str, value):
        """The value a condition `column == value` puts in every sampled row, as the column holds it
        (a category, a number, a date in the column's format; None for missing), or a DataError
        saying why no row can meet it: a value outside the training range (the model would have
        to invent it; the range is given), off a small support, not a category, of a key column.
        Text is read as a command line gives it: "3" for the category 3, "true" for True."""
        self._check_fitted()
        info = self._column(column)
        kind = info["kind"]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            if not info["has_missing"]:
                raise DataError(f"condition {column}=<missing>: {column!r} is never missing in the training table; "
                                f"give a value")
            return None
        if kind == "id":
            raise DataError(f"condition on {column!r}: it is a key (ID-like), generated fresh for every row and "
                            f"never copied; condition on other columns")
        if kind == "constant":
            if str(value) != str(info["value"]):
                raise DataError(f"condition {column}={value!r}: column {column!r} is constant ({info['value']!r})")
            return info["value"]
        if "categories" in info:
            cats = info["categories"]
            if _python(value) in cats:
                return cats[cats.index(_python(value))]
            by_text = {str(c): c for c in cats}
            if kind == "boolean":   # "true" as well as "True" (and 1/0, yes/no): a command line writes any
                words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
                by_text.update({w: b for w, b in words.items() if b in cats})
                value = str(value).lower() if str(value).lower() in by_text else value
            if str(value) not in by_text:
                raise DataError(f"condition {column}={value!r}: not a category of {column!r} (categories: {cats[:20]}"
                                f"{' ...' if len(cats) > 20 else ''})")
            return by_text[str(value)]
        number = self._numbers(column, kind, pd.Series([value], dtype=object), info, lenient=True)[0] \
            if kind == "datetime" else None
        if kind != "datetime":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise DataError(f"condition {column}={value!r}: {column!r} is {kind}; give a number") from None
        lo, hi = info["range"]
        if kind == "datetime":
            shown = [str(pd.Timestamp(int(v))) for v in (lo, hi)]
            if info.get("format") not in (None, "ISO8601"):
                shown = [pd.Timestamp(int(v)).strftime(info["format"]) for v in (lo, hi)]
        else:
            shown = [f"{v:g}" for v in (lo, hi)]
        if not lo <= number <= hi:
            raise DataError(f"condition {column}={value!r}: outside the training range of {column!r} "
                            f"[{shown[0]}, {shown[1]}]; give a value in it")
        if kind == "integer" and number != round(number):
            raise DataError(f"condition {column}={value!r}: {column!r} holds whole numbers")
        if "support" in info and number not in info["support"]:
            raise DataError(f"condition {column}={value!r}: {column!r} takes only the values {info['support'][:30]}"
                            f"{' ...' if len(info['support']) > 30 else ''}")
        if kind == "datetime":
            stamp = pd.Timestamp(int(number))
            fmt = info.get("format")
            return stamp.strftime(fmt) if fmt not in (None, "ISO8601") else stamp
        return int(number) if kind == "integer" else number

    def encode_condition(self, column: str, value) -> dict[int, float]:
        """{feature index: value} that every row meeting `column == value` has in the transformed
        space (the column's spans and its missing indicator); None/NaN asks for a missing value.
        The value is checked by `condition_value` (refused when no row of the model could hold it)."""
        value = self.condition_value(column, value)
        row = {c["name"]: [self._example(c)] for c in self.columns}
        row[column] = [value]
        self._lenient = True
        try:
            encoded = self.transform(pd.DataFrame(row, dtype=object), dtype=np.float64)[0]
        finally:
            self._lenient = False
        return {i: float(encoded[i]) for s in self.spans if s.column == column for i in range(s.start, s.stop)}

    @staticmethod
    def _example(info: dict):
        if info["kind"] == "constant":
            return info["value"]
        if info["kind"] == "id":
            return 0
        if "categories" in info:
            return info["categories"][0]
        lo = info["range"][0]
        if info["kind"] == "datetime":
            return pd.Timestamp(int(lo))
        return lo

    # ---- metadata: the inferred column types, to read and edit -------------------------------------------
    def metadata(self) -> dict:
        """{"columns": {name: {"kind", and what was found: "format" (text dates), "resolution",
        "range", "support", "points", "decimals", "categories" (count), "key"}}}. "kind" and
        "format" are read back by `read_metadata` (so editing them changes the next fit); the rest
        says what the fit found."""
        self._check_fitted()
        columns = {}
        for info in self.columns:
            kind = info.get("value_kind", info["kind"]) if info["kind"] == "constant" else info["kind"]
            entry = {"kind": kind, "dtype": info["dtype"], "missing_values": info["has_missing"]}
            if info["kind"] == "constant":
                entry["constant"] = info["value"]
            if "format" in info:
                entry["format"] = info["format"]
            for key in ("resolution", "points", "support", "decimals"):
                if info.get(key) not in (None, []):
                    entry[key] = info[key]
            if "range" in info:
                entry["range"] = info["range"] if kind != "datetime" else \
                    [str(pd.Timestamp(int(v))) for v in info["range"]]
            if "categories" in info:
                entry["categories"] = len(info["categories"])
            if kind == "id":
                entry["key"] = True
            columns[info["name"]] = entry
        return {"format": METADATA_FORMAT, "editable": ["kind", "format"], "kinds": list(KINDS),
                "columns": columns}

    def write_metadata(self, path: str | os.PathLike) -> Path:
        atomic_write_bytes(Path(path), json.dumps(self.metadata(), indent=1, default=str).encode())
        return Path(path)

    # ---- save / load ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT_VERSION, "column_types": self.column_types, "max_modes": self.max_modes,
                "weight_threshold": self.weight_threshold, "max_discrete": self.max_discrete, "seed": self.seed,
                "formats": self.formats, "enforce_range": self.enforce_range,
                "enforce_rounding": self.enforce_rounding,
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
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        directory = Path(directory)
        meta_path, arrays_path = directory / f"{prefix}.json", directory / f"{prefix}.safetensors"
        for p in (meta_path, arrays_path):
            if not p.is_file():
                raise DataError(f"{str(p)!r} is missing: {str(directory)!r} holds no saved table transformer")
        try:
            meta = json.loads(meta_path.read_text())
            arrays = load_file(str(arrays_path))
        except (ValueError, OSError, SafetensorError) as e:
            raise DataError(f"the saved transformer in {str(directory)!r} is corrupt ({e}); fit and save it again") from e
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{str(meta_path)!r} has format {meta.get('format')!r}; this untwine reads "
                            f"{FORMAT_VERSION}: refit the model")
        try:
            tt = cls(meta["column_types"], meta["max_modes"], meta["weight_threshold"], meta["max_discrete"],
                     meta["seed"], meta.get("formats"), meta.get("enforce_range", True),
                     meta.get("enforce_rounding", True))
            tt.columns, tt.spans = meta["columns"], [Span(**s) for s in meta["spans"]]
            tt.modes = {c["name"]: (arrays[f"{c['name']}/means"], arrays[f"{c['name']}/stds"])
                        for c in tt.columns if c["kind"] in NUMERIC_KINDS}
        except (KeyError, TypeError) as e:   # a key missing from the JSON or the arrays
            raise DataError(f"the saved transformer in {str(directory)!r} is incomplete ({type(e).__name__}: {e}); "
                            f"fit and save it again") from e
        return tt


def read_metadata(path: str | os.PathLike) -> dict:
    """{"column_types": {...}, "formats": {...}} from a metadata file (`TableTransformer.metadata`,
    written by `untwine tabular fit` as MODEL_DIR/metadata.json), for TableTransformer or
    TabularMultiStage; every problem named with the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"metadata file {str(path)!r} does not exist; `untwine tabular fit` writes one as "
                        f"MODEL_DIR/metadata.json")
    try:
        meta = json.loads(p.read_text())
    except (ValueError, OSError) as e:
        raise DataError(f"metadata file {str(path)!r} is not valid JSON ({e}); fix it or write it again with "
                        f"`untwine tabular fit`") from e
    columns = meta.get("columns") if isinstance(meta, dict) else None
    if not isinstance(columns, dict) or not all(isinstance(v, dict) for v in columns.values()):
        raise DataError(f"metadata file {str(path)!r} has no \"columns\" object of {{column: {{\"kind\": ...}}}}; "
                        f"start from the one `untwine tabular fit` writes")
    types, formats = {}, {}
    for name, entry in columns.items():
        kind = entry.get("kind")
        if kind not in KINDS:
            raise DataError(f"metadata file {str(path)!r}: column {name!r} has kind {kind!r}; expected one of {KINDS}")
        types[name] = kind
        if entry.get("format") not in (None, "ISO8601"):
            if kind != "datetime":
                raise DataError(f"metadata file {str(path)!r}: column {name!r} has a date format but kind {kind!r}; "
                                f"make it \"datetime\" or remove the format")
            formats[name] = str(entry["format"])
    return {"column_types": types, "formats": formats}
