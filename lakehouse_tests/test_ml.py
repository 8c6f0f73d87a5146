"""ML pipelines on a small synthetic lake: leakage proof, champion gate, drift gate, reproduction,
predictions and anomaly flags. Models are tiny (a few iterations/epochs); each test can fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse.ml import champion, drift, forecast
from lakehouse.ml import pipeline as fp
from lakehouse.ml.reproduce import main as reproduce_cli
from lakehouse.ml.reproduce import reproduce
from lakehouse_tests.conftest import REPO
from lakehouse_tests.declarations import copy_configs, declaration
from lakehouse_tests.ml_fixtures import inject_faults, synthetic_daily

START, END = "2012-01", "2013-06"
FORECAST_CORE = ["consumption_features", "consumption_labels", "consumption_split", "consumption_gbm", "consumption_mlp"]
TRAIN_ALL = [*FORECAST_CORE, "meter_drift", "meter_model", "consumption_champion"]


def keys(*names: str) -> list[dg.AssetKey]:
    return [dg.AssetKey(["ml", n]) for n in names]


def tiny_configs(target: Path, **model_params) -> Path:
    """A copy of configs/ with small models (and overrides ``gbm``/``mlp`` params)."""
    if target.exists():
        shutil.rmtree(target)
    copy_configs(target)
    path = declaration(target, "ml", "consumption_forecast")
    spec = yaml.safe_load(path.read_text())
    p = spec["attributes"]["params"]
    p["cv"]["folds"] = 3
    p["split"]["validation_months"] = 3
    p["features"]["signature_min_days"] = 14
    p["models"]["gbm"]["params"].update({"max_iter": 40, "learning_rate": 0.1}, **model_params.get("gbm", {}))
    p["models"]["mlp"]["params"].update({"hidden": [16], "epochs": 6, "patience": 3}, **model_params.get("mlp", {}))
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return target


def write_daily(lake: Lake, daily: pd.DataFrame) -> None:
    for month, part in daily.drop(columns=["noise_kwh"]).groupby("month"):
        lake.overwrite_month("exploitation", "consumption_daily", pa.Table.from_pandas(part, preserve_index=False), month)


def load(configs: Path, lake_root: Path):
    from lakehouse.specs import load_project

    project = load_project(
        configs, env={"LAKEHOUSE_ROOT": str(lake_root), "LAKEHOUSE_DEMO_ROOT": str(lake_root.parent / "world")}
    )
    return project, build_definitions(project)


def run(defs, selection, **kw):
    return dg.materialize(
        defs.assets,
        selection=selection,
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        **kw,
    )


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def materialized(result) -> dict[str, dict]:
    return {e.materialization.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lake with 4 meters x 18 months of consumption_daily (40 faulty meter-days), everything trained."""
    root = tmp_path_factory.mktemp("ml")
    configs = tiny_configs(root / "configs")
    daily, faulty = inject_faults(synthetic_daily(meters=4, start=START, end=END), 40, seed=1)
    project, defs = load(configs, root / "lake")
    lake = Lake(project.lake_root)
    write_daily(lake, daily)
    result = run(defs, keys(*TRAIN_ALL))
    assert result.success, [e.event_specific_data for e in result.all_events if e.is_failure]
    return {"root": root, "configs": configs, "lake": lake, "daily": daily, "faulty": faulty, "result": result}


@pytest.fixture
def lake_copy(trained, tmp_path):
    """An independent copy of the trained lake (tests that change it do not disturb the others); its
    champion pointer names the model relative to the lake, so the copy serves its own models."""
    target = tmp_path / "lake"
    shutil.copytree(trained["lake"].root, target)
    return target


# ------------------------------------------------------------------------------------ pure functions
@pytest.fixture(scope="module")
def small():
    daily = synthetic_daily(meters=3, start="2012-01", end="2012-09")
    params = fp.ForecastParams.model_validate(
        yaml.safe_load((REPO / "lakehouse/defs/ml/consumption_forecast/defs.yaml").read_text())["attributes"]["params"]
    )
    params = fp.ForecastParams.model_validate({**params.raw, "split": {"validation_months": 2, "min_history_days": 14}})
    return daily, params


def test_history_features_only_look_back(small):
    daily, params = small
    base = fp.features_from(daily, params)
    day = pd.Timestamp("2012-05-10").date()
    changed = daily.copy()
    changed.loc[changed["date"] == day, "consumption_kwh"] *= 10
    again = fp.features_from(changed, params)
    cols = forecast.feature_columns(base, params.columns)
    before = pd.to_datetime(base["date"]).dt.date <= day
    pd.testing.assert_frame_equal(base.loc[before, cols], again.loc[before, cols])
    assert not base.loc[~before, "lag_1"].equals(again.loc[~before, "lag_1"])  # the next day does see it


def test_time_split_puts_every_validation_day_after_training(small):
    daily, params = small
    labels = fp.labels_from(daily, params)
    split, info = fp.split_from(labels, params)
    dates = pd.to_datetime(split["date"])
    assert dates[split["split"] == "train"].max() < pd.Timestamp(info["cut_date"]) <= dates[split["split"] == "validation"].min()
    assert info["validation_months"] == ["2012-08", "2012-09"]
    labels_reasons = set(labels.loc[~labels["label_ok"], "reason"])
    assert set(split.loc[split["split"] == "excluded", "reason"]) <= {"no_history", "gap", *labels_reasons}


def test_leakage_check_passes_then_fails_when_a_leak_is_planted(small):
    daily, params = small
    labels = fp.labels_from(daily, params)
    split, info = fp.split_from(labels, params)
    honest = fp.features_from(daily, params)
    report = fp.leakage_from(daily, honest, split, info["cut_date"], params)
    assert report.passed and report.train_rows_checked > 0

    def leaky(d: pd.DataFrame) -> pd.DataFrame:
        # a "smoothed" consumption feature centred on the day: the last training days see validation days
        out = fp.features_from(d, params)
        y = d.sort_values(["meter_id", "date"]).groupby("meter_id")["consumption_kwh"]
        out["roll_7"] = y.transform(lambda s: s.rolling(7, center=True, min_periods=1).mean()).to_numpy()
        return out

    report = forecast.leakage_report(daily, leaky(daily), split, info["cut_date"], leaky, params.columns)
    assert not report.passed
    assert set(report.leaking_features) == {"roll_7"} and 0 < report.leaking_rows <= 3 * 3
    assert report.samples and report.samples[0]["date"] < info["cut_date"]


def test_champion_gate_and_pick():
    a = champion.Candidate("gbm", "/m/gbm/v1", 10.0, {})
    b = champion.Candidate("mlp", "/m/mlp/v1", 9.5, {})
    assert champion.pick([a, b]).name == "mlp"
    assert champion.not_worse(9.5, None).passed
    assert champion.not_worse(9.5, 9.6).passed
    assert not champion.not_worse(9.7, 9.6).passed
    assert champion.not_worse(9.7, 9.6, tolerance=0.02).passed


def test_psi_flags_a_shift_and_reference_is_the_same_month_last_year():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 2000)
    assert drift.psi(ref, rng.normal(0, 1, 2000)) < 0.05
    assert drift.psi(ref, rng.normal(1.0, 1, 2000)) > 0.25
    assert drift.reference_month("2013-03", ["2012-03", "2013-01", "2013-02"]) == "2012-03"
    assert drift.reference_month("2013-03", ["2013-01", "2013-02"]) == "2013-02"
    assert drift.reference_month("2013-01", ["2013-01"]) is None


# ------------------------------------------------------------------------------------------ assets
def test_forecast_assets_train_validate_and_promote(trained):
    result, lake = trained["result"], trained["lake"]
    got = checks(result)
    assert {k: got[k] for k in ("no_validation_leak", "not_worse_than_current", "no_severe_drift")} == dict.fromkeys(
        ("no_validation_leak", "not_worse_than_current", "no_severe_drift"), True
    )
    assert "drift_psi" in got  # a warning-only check: weather drifts from one year to the next
    meta = materialized(result)
    for name in ("consumption_gbm", "consumption_mlp"):
        m = meta[name]
        assert m["rmse"].value > 0 and m["validation_rows"].value > 0 and -1 < m["r2"].value <= 1
        assert "data:image/png;base64," in m["plots"].value
        assert m["per_month"].value.records and "month" in m["per_month"].value.records[0].data
        folder = Path(lake.root) / m["model_dir"].value
        assert {p.name for p in (folder / "plots").iterdir()} == {
            "predicted_vs_actual.png",
            "residuals_by_month.png",
            "feature_importance.png",
        }
        lineage = json.loads((folder / "lineage.json").read_text())
        assert lineage["inputs"]["exploitation/consumption_daily"]["delta_version"] == lake.version(
            "exploitation", "consumption_daily"
        )
        assert lineage["inputs"]["ml/consumption_split"]["delta_version"] == lake.version("ml", "consumption_split")
        assert lineage["code_version"]["lakehouse"] and "git_commit" in lineage["code_version"]
    assert meta["consumption_gbm"]["cv_folds"].value == 3 and len(meta["consumption_gbm"]["cv"].value.records) == 3
    pointer = json.loads(lake.storage.read(lake.uri("ml", "consumption_champion", "champion.json")))
    # table maintenance keeps every version a model depends on readable (vacuum skips them)
    from lakehouse.io.maintenance import versions_in_use

    in_use = versions_in_use(lake)
    assert lake.version("exploitation", "consumption_daily") in in_use[("exploitation", "consumption_daily")]
    assert lake.version("ml", "consumption_split") in in_use[("ml", "consumption_split")]
    best = min(("gbm", "mlp"), key=lambda n: meta[f"consumption_{n}"]["rmse"].value)
    assert pointer["model"] == best and meta["consumption_champion"]["promoted"].value is True
    # the champion is named relative to the lake (a moved or restored lake loads its own models)
    assert pointer["model_dir"] == f"ml/consumption_{best}/models/v0001" == meta["consumption_champion"]["model_dir"].value


def test_reproduce_gives_identical_metrics_after_the_input_moved_on(trained, lake_copy):
    lake = Lake(lake_copy)
    # the input table moves on after training: one month is rewritten with different numbers
    month = lake.read_arrow("exploitation", "consumption_daily", months=["2013-06"]).to_pandas()
    month["consumption_kwh"] *= 1.5
    lake.overwrite_month("exploitation", "consumption_daily", pa.Table.from_pandas(month, preserve_index=False), "2013-06")
    for name in ("gbm", "mlp"):
        folder = sorted((lake_copy / "ml" / f"consumption_{name}" / "models").iterdir())[-1]
        result = reproduce(folder)
        assert result.identical, result.render()
        assert any(c["what"] == "rmse" for c in result.checks) and any(c["what"] == "features hash" for c in result.checks)
    detector = sorted((lake_copy / "ml" / "meter_model" / "models").iterdir())[-1]
    assert reproduce(detector).identical
    assert reproduce_cli([str(folder)]) == 0  # the command: exit 0 when identical


def test_reproduce_notices_a_different_input(trained, lake_copy):
    folder = sorted((lake_copy / "ml" / "consumption_gbm" / "models").iterdir())[-1]
    lineage = json.loads((folder / "lineage.json").read_text())
    lineage["inputs"]["exploitation/consumption_daily"]["delta_version"] -= 1  # one month fewer
    (folder / "lineage.json").write_text(json.dumps(lineage))
    result = reproduce(folder)
    assert not result.identical
    assert reproduce_cli([str(folder)]) == 1


def test_champion_gate_refuses_a_worse_model(trained, lake_copy, tmp_path):
    configs = tiny_configs(tmp_path / "configs", gbm={"max_iter": 2, "learning_rate": 0.01}, mlp={"epochs": 1, "lr": 1e-5})
    _, defs = load(configs, lake_copy)
    pointer = lake_copy / "ml" / "consumption_champion" / "champion.json"
    before = pointer.read_text()
    result = run(defs, keys("consumption_gbm", "consumption_mlp", "consumption_champion"))
    assert not result.success
    assert checks(result)["not_worse_than_current"] is False
    assert pointer.read_text() == before  # the current champion keeps serving
    meta = materialized(result)["consumption_champion"]
    assert meta["promoted"].value is False


def test_severe_drift_blocks_the_champion(trained, lake_copy, tmp_path):
    lake = Lake(lake_copy)
    # the newest month arrives with every meter reading three times too much (an unnoticed unit change)
    month = lake.read_arrow("exploitation", "consumption_daily", months=[END]).to_pandas()
    month["consumption_kwh"] *= 3
    lake.overwrite_month("exploitation", "consumption_daily", pa.Table.from_pandas(month, preserve_index=False), END)
    _, defs = load(trained["configs"], lake_copy)
    result = run(defs, keys("meter_drift", "consumption_champion"))
    got = checks(result)
    assert got["drift_psi"] is False  # the drift asset warns about the newest month
    assert got["no_severe_drift"] is False and not result.success
    drift_table = lake.read_arrow("ml", "meter_drift").to_pandas()
    row = drift_table[(drift_table["month"] == END) & (drift_table["feature"] == "signature_log_ratio")].iloc[0]
    assert row["level"] == "severe"


def test_planted_leak_fails_the_split_check_and_blocks_training(trained, lake_copy, monkeypatch):
    real = forecast.build_features

    def leaky(daily, cfg, labels, cols):
        out = real(daily, cfg, labels, cols)
        y = out.merge(
            daily.assign(date=pd.to_datetime(daily["date"]).dt.date)[["meter_id", "date", "consumption_kwh"]],
            on=["meter_id", "date"],
        )
        out["roll_7"] = y.groupby("meter_id")["consumption_kwh"].transform(lambda s: s.shift(-1)).to_numpy()  # tomorrow
        return out

    monkeypatch.setattr(forecast, "build_features", leaky)
    _, defs = load(trained["configs"], lake_copy)
    result = run(defs, keys("consumption_features", "consumption_labels", "consumption_split", "consumption_gbm"))
    assert checks(result)["no_validation_leak"] is False
    assert "consumption_gbm" not in materialized(result)  # the blocking check stopped training


def test_monthly_predictions_and_anomaly_flags(trained, lake_copy):
    _, defs = load(trained["configs"], lake_copy)
    tags = {ASSET_PARTITION_RANGE_START_TAG: "2013-04", ASSET_PARTITION_RANGE_END_TAG: END}
    result = run(defs, keys("consumption_predictions", "meter_flags"), tags=tags)
    assert result.success
    lake = Lake(lake_copy)
    pred = lake.read_arrow("ml", "consumption_predictions").to_pandas()
    assert sorted(pred["month"].unique()) == ["2013-04", "2013-05", "2013-06"]
    assert set(pred["sample"]) == {"validation"} and pred["predicted"].notna().all()
    ok = pred[pred["label_ok"]]
    assert np.sqrt(np.mean((ok["predicted"] - ok["actual"]) ** 2)) < ok["actual"].std()
    # anomaly flags over every month, scored against the faults the fixture injected
    all_months = {ASSET_PARTITION_RANGE_START_TAG: START, ASSET_PARTITION_RANGE_END_TAG: END}
    assert run(defs, keys("meter_flags"), tags=all_months).success
    flags = lake.read_arrow("ml", "meter_flags").to_pandas()
    flagged = set(map(tuple, flags.loc[flags["flagged"], ["meter_id", "date"]].to_numpy()))
    faulty = trained["faulty"]
    tp = len(flagged & faulty)
    precision, recall = tp / max(len(flagged), 1), tp / len(faulty)
    assert recall >= 0.9 and precision >= 0.8, (precision, recall, len(flagged))
