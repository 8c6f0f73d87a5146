"""``lakehouse/defs/ml/<pipeline>/defs.yaml`` (attributes of ``lakehouse.components.Pipeline``): an analysis pipeline, typed by its ``kind``.

Each kind's ``params`` is a pydantic model: the file is checked when it is loaded (a mistake names the
file, line and key), and the ML code receives the typed parameters it runs with. A model's lineage
records the parameters as given (:attr:`ForecastParams.raw`), so a reproduction reads them back the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from lakehouse.specs.tables import TableName

#: model types of a forecasting pipeline (``lakehouse.ml.train.make_model`` builds each)
MODEL_TYPES = ("sklearn_ridge", "sklearn_linear", "sklearn_gbm", "torch_mlp")
#: cross-validation protocols: shuffled k-fold, or forward-chaining folds in time
CV_KINDS = ("kfold", "time_series")
#: what the champion is chosen on: the hold-out validation RMSE, or the pooled out-of-fold CV RMSE
CHAMPION_METRICS = ("rmse", "cv_rmse")
#: profile roles (``params.detector.profile``): the day as received, one column each
PROFILE_ROLES = ("total", "received", "periods_covered", "repeat_run", "off_grid", "negatives", "max_share")
#: the anomaly detector's figures and the profile roles each needs (``lakehouse.ml.anomaly.day_features``)
FIGURES = {
    "missing_periods": ("periods_covered",),
    "extra_readings": ("received", "periods_covered"),
    "repeat_run": ("repeat_run",),
    "off_grid_readings": ("off_grid",),
    "negative_values": ("negatives",),
    "max_period_share": ("max_share",),
    "cleaning_log_ratio": ("total",),
}
SIGNATURE = "signature_log_ratio"


class Options(BaseModel):
    """Parameters of a pipeline: unknown keys are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_tuple(value: Any) -> Any:
    """A single name where a list of names is expected reads as a list of one."""
    return (value,) if isinstance(value, str) else value


class Columns(Options):
    """``params.columns``: which input column plays which part.

    ``entity``: the key of one series (none for a single series); ``time``: the day; ``target``: what is
    forecast; ``temperature``: the outdoor temperature HDD/CDD come from; ``drivers``: further columns a
    day needs to be learned from (a missing one excludes its label); ``categorical``: columns one-hot
    encoded by the models.
    """

    time: str = Field(min_length=1)
    target: str = Field(min_length=1)
    entity: tuple[str, ...] = ()
    temperature: str | None = None
    drivers: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    _tuples = field_validator("entity", "drivers", "categorical", mode="before")(_as_tuple)

    @property
    def key(self) -> list[str]:
        return [*self.entity, self.time]

    @property
    def required_drivers(self) -> list[str]:
        return list(dict.fromkeys([*([self.temperature] if self.temperature else []), *self.drivers]))


class FeatureConfig(Options):
    """``params.features``: ``hdd_base_c`` / ``cdd_base_c``: heating / cooling degree-day bases (``hdd =
    max(0, base - t)``, ``cdd = max(0, t - base)`` from ``columns.temperature``); ``columns``: input columns
    carried into the feature table as they are; ``lags``, ``rolling``: the target's past days;
    ``signature_days``: history of the past-only energy signature (least squares of the target on HDD; 0: none).
    """

    hdd_base_c: float | None = None
    cdd_base_c: float | None = None
    columns: tuple[str, ...] = ()
    lags: tuple[int, ...] = (1, 7)
    rolling: tuple[int, ...] = (7, 28)
    signature_days: int = 365
    signature_min_days: int = 28


class Bounds(Options):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some(self) -> Bounds:
        if self.min is None and self.max is None:
            raise ValueError("a label rule gives 'min' and/or 'max'")
        return self


class LabelConfig(Options):
    """``params.labels``: ``rules`` maps a column of the daily table to its bounds; a day is a usable label
    when its target is known and every rule holds (a missing value breaks the rule), and every declared
    driver is present."""

    rules: dict[str, Bounds] = Field(default_factory=dict)


class SplitConfig(Options):
    """``params.split``: ``validation_months``: the last months validate; earlier ones train.
    ``min_history_days``: a series' first days (no history yet) are excluded. ``gap_days``: days dropped
    between train and validation."""

    validation_months: int = Field(default=6, ge=1)
    min_history_days: int = Field(default=28, ge=0)
    gap_days: int = Field(default=0, ge=0)


class CVConfig(Options):
    """``params.cv``: ``kind`` (``time_series`` or ``kfold``), ``folds``, ``seed`` (kfold shuffling; the
    pipeline's seed when absent)."""

    kind: Literal["kfold", "time_series"] = "time_series"
    folds: int = Field(default=10, ge=2)
    seed: int = 0


def model_columns(features: Sequence[str], baseline: str | None = None) -> list[str]:
    """The columns a model reads: its features, plus its baseline."""
    return list(dict.fromkeys([*features, *([baseline] if baseline else [])]))


class ModelConfig(Options):
    """One model of ``params.models`` (its ``name`` is its key there)."""

    #: given by the model's key (never written in the YAML, so not in its JSON schema)
    name: SkipJsonSchema[str]
    type: Literal["sklearn_ridge", "sklearn_linear", "sklearn_gbm", "torch_mlp"]
    features: tuple[str, ...] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    cv: bool = False
    #: a feature column the model corrects (learns target / baseline) instead of predicting from scratch
    baseline: str | None = None

    @property
    def columns(self) -> list[str]:
        """The feature table's columns the model reads (its features, and its baseline)."""
        return model_columns(self.features, self.baseline)


class ChampionConfig(Options):
    """``params.champion``: the metric the candidates compete on, how much worse than the current champion
    a new one may be, and the drift table (and features) that gate a promotion."""

    metric: Literal["rmse", "cv_rmse"] = "rmse"
    tolerance: float = Field(default=0.0, ge=0)
    drift_table: TableName | None = None
    drift_features: tuple[str, ...] | None = None


class ForecastParams(Options):
    """``params`` of a ``consumption_forecast`` pipeline."""

    seed: int = 0
    prefix: str | None = None
    columns: Columns
    features: FeatureConfig = FeatureConfig()
    labels: LabelConfig = LabelConfig()
    split: SplitConfig = SplitConfig()
    cv: CVConfig = CVConfig()
    models: dict[str, ModelConfig] = Field(min_length=1)
    champion: ChampionConfig = ChampionConfig()
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _given(cls, data: Any, handler: Any) -> ForecastParams:
        """Name each model by its key, give ``cv`` the pipeline's seed, and keep the parameters as given."""
        if not isinstance(data, dict):
            return handler(data)  # an instance already, or an error pydantic reports
        given = dict(data)
        if isinstance(given.get("models"), dict):
            given["models"] = {n: {**m, "name": n} if isinstance(m, dict) else m for n, m in given["models"].items()}
        cv = given.get("cv")
        if cv is None or (isinstance(cv, dict) and cv.get("seed") is None):
            given["cv"] = {**(cv or {}), "seed": given.get("seed", 0)}
        out = handler(given)
        out._raw = dict(data)
        return out

    @model_validator(mode="after")
    def _cv_for_cv_rmse(self) -> ForecastParams:
        if self.champion.metric == "cv_rmse" and (no_cv := [n for n, m in self.models.items() if not m.cv]):
            raise ValueError(f"champion.metric cv_rmse compares models on the same folds: model(s) {no_cv} need 'cv: true'")
        return self

    @property
    def raw(self) -> dict[str, Any]:
        """The parameters as the file gave them (recorded in lineage; :meth:`model_validate` reads them back)."""
        return self._raw

    @property
    def champion_metric(self) -> str:
        return self.champion.metric

    @property
    def drivers(self) -> list[str]:
        """Numeric drivers whose validation values are checked against the training range."""
        derived = [c for c, base in (("hdd", self.features.hdd_base_c), ("cdd", self.features.cdd_base_c)) if base is not None]
        return list(dict.fromkeys([*self.columns.required_drivers, *derived]))


class AnomalyConfig(Options):
    """``params.detector`` of a ``meter_anomaly`` pipeline, with the pipeline's ``columns``."""

    #: the pipeline's ``params.columns`` (never written in the YAML, so not in its JSON schema)
    columns: SkipJsonSchema[Columns]
    method: Literal["isolation_forest"] = "isolation_forest"
    features: tuple[str, ...] = tuple(FIGURES)
    #: role -> column of the day as received (before cleaning)
    profile: dict[Literal["total", "received", "periods_covered", "repeat_run", "off_grid", "negatives", "max_share"], str] = (
        Field(default_factory=dict)
    )
    #: periods (readings) a complete day has
    periods_per_day: int = Field(default=24, ge=1)
    hdd_base_c: float = 16.5
    n_estimators: int = Field(default=200, ge=1)
    max_samples: int | str = 512
    #: share of days expected to be faulty (``auto``: Isolation Forest's own offset of -0.5)
    contamination: float | str = "auto"

    @model_validator(mode="after")
    def _figures_have_columns(self) -> AnomalyConfig:
        for f in self.features:
            if f not in FIGURES and f != SIGNATURE:
                raise ValueError(f"detector feature {f!r} is unknown; known: {[*FIGURES, SIGNATURE]}")
            if missing := [r for r in FIGURES.get(f, ()) if r not in self.profile]:
                raise ValueError(f"detector feature {f!r} needs detector.profile.{missing[0]} (the column it comes from)")
            if f == SIGNATURE and not self.columns.temperature:
                raise ValueError(f"detector feature {SIGNATURE!r} needs columns.temperature")
        return self


class DriftConfig(Options):
    """``params.drift``: the columns compared month to month (and ratios derived for it, ``name:
    [numerator, denominator]``), PSI bins and thresholds; fewer than ``min_rows`` rows in a month: no verdict."""

    features: tuple[str, ...] = Field(min_length=1)
    ratios: dict[str, tuple[str, str]] = Field(default_factory=dict)
    bins: int = Field(default=10, ge=2)
    warn_psi: float = 0.1
    severe_psi: float = 0.25
    min_rows: int = 50


class AnomalyParams(Options):
    """``params`` of a ``meter_anomaly`` pipeline; the detector sees the pipeline's ``columns``."""

    seed: int = 0
    prefix: str | None = None
    columns: Columns
    detector: AnomalyConfig
    drift: DriftConfig

    @model_validator(mode="before")
    @classmethod
    def _columns_to_detector(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("detector", {}), dict):
            return {**data, "detector": {**(data.get("detector") or {}), "columns": data.get("columns")}}
        return data


class _Pipeline(Options):
    name: str
    description: str = ""
    #: the ``<zone>/<table>`` the pipeline learns from
    input: TableName

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        from lakehouse.specs.models import _check_ident

        return _check_ident(value)

    @property
    def prefix(self) -> str:
        """What the pipeline's assets are named after (``ml/<prefix>_...``)."""
        return getattr(self.params, "prefix", None) or self.name  # type: ignore[attr-defined]


class ForecastPipeline(_Pipeline):
    kind: Literal["consumption_forecast"]
    params: ForecastParams


class AnomalyPipeline(_Pipeline):
    kind: Literal["meter_anomaly"]
    params: AnomalyParams


#: an analysis pipeline; ``kind`` selects its parameters and its builder (``lakehouse.factories.ml``)
PipelineSpec = Annotated[ForecastPipeline | AnomalyPipeline, Field(discriminator="kind")]
PIPELINE_KINDS = ("consumption_forecast", "meter_anomaly")
