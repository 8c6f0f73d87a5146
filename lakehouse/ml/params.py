"""Validation of a pipeline's ``params`` by kind, with the configuration classes the pipelines use
(called when ``configs/ml/*.yaml`` is loaded, so a mistake is reported with its file and line)."""

from __future__ import annotations

from typing import Any


def check_params(kind: str, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the option when ``params`` do not fit ``kind`` (unknown kinds are left
    to the factory, which names the known ones)."""
    from lakehouse.ml import anomaly, drift, forecast
    from lakehouse.ml import pipeline as fp

    if kind == "consumption_forecast":
        fp.ForecastParams.of(params)
    elif kind == "meter_anomaly":
        anomaly.AnomalyConfig.of(params.get("detector"), params.get("columns"))
        drift.DriftConfig.of(params.get("drift"))
    elif kind == "consumption_regression":
        forecast.Columns.of(params.get("columns"))
