"""The second scenario, ``configs/examples/gas_meter/``: one household gas meter with its own outdoor
temperature, served as gzip JSON by a local provider, declared by YAML alone from landing to a champion.

Nothing in this file knows the scenario's columns except to simulate the provider's data and to check
the result independently: the lakehouse runs the example's configs as they are. The champion's 10-fold
CV R² is reported next to a plain HDD linear regression fitted here with scikit-learn on the same folds.
"""

from __future__ import annotations

import gzip
import json
import threading
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import dagster as dg
import numpy as np
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse_tests.conftest import REPO

EXAMPLE = REPO / "configs" / "examples" / "gas_meter"
FIRST, LAST = date(2013, 3, 1), date(2015, 1, 31)
MISSING_TEMPERATURE = 21
NEGATIVE, SPIKE = 100, 400


def simulate(seed: int = 3) -> tuple[list[dict], dict[str, float]]:
    """~700 days of a gas meter: base + slope × HDD(16.5 °C) + noise. Some days come without a temperature
    (the key absent or null), one with a negative reading, one with a spike, and January 2015 has a cold
    spell colder than any training day."""
    rng = np.random.default_rng(seed)
    days = [FIRST + timedelta(days=i) for i in range((LAST - FIRST).days + 1)]
    doy = np.array([d.timetuple().tm_yday for d in days])
    temp = 10.0 - 8.0 * np.cos(2 * np.pi * (doy - 20) / 365.25) + rng.normal(0, 2.5, len(days))
    cold = np.array([date(2015, 1, 8) <= d <= date(2015, 1, 17) for d in days])
    temp[cold] = -14.0 + rng.normal(0, 1.0, cold.sum())
    truth = {"base": 16.0, "slope": 10.5, "noise_sd": 4.0}
    energy = truth["base"] + truth["slope"] * np.maximum(0.0, 16.5 - temp) + rng.normal(0, truth["noise_sd"], len(days))
    records = []
    for d, t, e in zip(days, temp, np.maximum(energy, 0.0), strict=True):
        records.append(
            {"time_period": d.isoformat(), "energy_kwh": round(float(e), 2), "weather": {"temperature_degC": round(float(t), 1)}}
        )
    faulty = {NEGATIVE: -3.0, SPIKE: records[SPIKE]["energy_kwh"] * 6 + 200}
    ordinary = np.flatnonzero(~cold & ~np.isin(np.arange(len(days)), list(faulty)))
    gaps = rng.choice(ordinary, MISSING_TEMPERATURE, replace=False)
    for n, i in enumerate(sorted(gaps)):
        if n % 2:
            records[i]["weather"] = {"temperature_degC": None}
        else:
            del records[i]["weather"]
    for i, value in faulty.items():  # quarantined by the source's rule and its outlier step
        records[i]["energy_kwh"] = round(value, 2)
    return records, truth


class Provider(ThreadingHTTPServer):
    """The metering provider's export API: ``/meters/<id>/export.json.gz?from=YYYY-MM-DD&to=YYYY-MM-DD``."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        q = parse_qs(url.query)
        if not url.path.endswith("/export.json.gz") or "from" not in q or "to" not in q:
            self.send_error(404)
            return
        start, end = q["from"][0], q["to"][0]
        data = [r for r in self.server.records if start <= r["time_period"] < end]
        body = gzip.compress(json.dumps({"meter": url.path.split("/")[2], "unit": "kWh", "data": data}).encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def example(tmp_path_factory, spark):
    from lakehouse.factories import build_definitions
    from lakehouse.io.lake import Lake
    from lakehouse.specs import load_project

    records, truth = simulate()
    root = tmp_path_factory.mktemp("gas")
    with Provider(records) as provider:
        thread = threading.Thread(target=provider.serve_forever, daemon=True)
        thread.start()
        project = load_project(EXAMPLE, env={"LAKEHOUSE_ROOT": str(root / "lake"), "GAS_METER_URL": provider.url})
        defs = build_definitions(project)
        zones = [dg.AssetKey([z, "gas_meter"]) for z in ("landing", "formatted", "trusted")]
        months = {ASSET_PARTITION_RANGE_START_TAG: "2013-03", ASSET_PARTITION_RANGE_END_TAG: "2015-01"}
        instance = dg.DagsterInstance.ephemeral()
        ingest = dg.materialize(defs.assets, selection=zones, resources=defs.resources, tags=months, instance=instance)
        provider.shutdown()
    assert ingest.success
    ml = [dg.AssetKey(["ml", f"gas_{n}"]) for n in ("features", "labels", "split", "hdd_linear", "ridge", "gbm", "champion")]
    result = dg.materialize(defs.assets, selection=ml, resources=defs.resources, instance=instance, raise_on_error=False)
    assert result.success, [e.event_specific_data for e in result.all_events if e.is_failure]
    return {"records": records, "truth": truth, "lake": Lake(project.lake_root), "result": result}


def _metadata(result) -> dict[str, dict]:
    return {e.materialization.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}


def test_every_delivered_day_lands_and_the_faulty_ones_are_quarantined(example):
    lake = example["lake"]
    trusted = lake.read_arrow("trusted", "gas_meter").to_pandas()
    assert len(trusted) == len(example["records"]) - 2
    assert trusted["temperature_c"].isna().sum() == MISSING_TEMPERATURE
    quarantine = lake.read_arrow("quality", "quarantine").to_pandas()
    bad = quarantine[(quarantine["dataset"] == "gas_meter") & (quarantine["stage"] == "trusted")]
    records = example["records"]
    got = {(r.rule, json.loads(r.key)["day"]) for r in bad.itertuples()}
    assert {rule for rule, _ in got} == {"non_negative_energy", "energy_spike"} and len(bad) == 2, got
    assert {day for _, day in got} == {records[NEGATIVE]["time_period"], records[SPIKE]["time_period"]}


def test_days_without_temperature_are_excluded_with_their_reason(example):
    from lakehouse.ml import pipeline as fp

    lake = example["lake"]
    labels, _, _ = fp.read_table(lake, "gas_labels")
    split, _, _ = fp.read_table(lake, "gas_split")
    feats, _, _ = fp.read_table(lake, "gas_features")
    assert (labels["reason"] == "no_temperature_c").sum() == MISSING_TEMPERATURE
    assert (split["reason"] == "no_temperature_c").sum() == MISSING_TEMPERATURE
    # never silently 0: their HDD is empty, and no training or validation row lacks it
    missing = feats["temperature_c"].isna()
    assert missing.sum() == MISSING_TEMPERATURE and feats.loc[missing, "hdd"].isna().all()
    used = split.merge(feats, on=["day"])
    assert used.loc[used["split"].isin(["train", "validation"]), "hdd"].notna().all()


def test_champion_is_not_worse_than_a_plain_hdd_regression_on_the_same_10_folds(example):
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict

    from lakehouse.ml import pipeline as fp

    lake = example["lake"]
    meta = _metadata(example["result"])
    pointer = json.loads(lake.storage.read(lake.uri("ml", "gas_champion", "champion.json")))
    assert pointer["metric"] == "cv_rmse"
    # the plain HDD regression, fitted here on the training rows in the pipeline's order and folds
    split, _, _ = fp.read_table(lake, "gas_split")
    feats, _, _ = fp.read_table(lake, "gas_features")
    labels, _, _ = fp.read_table(lake, "gas_labels")
    train = split[split["split"] == "train"].merge(feats, on="day").merge(labels[["day", "label"]], on="day").sort_values("day")
    folds = KFold(n_splits=10, shuffle=True, random_state=0)
    plain = cross_val_predict(LinearRegression(), train[["hdd"]], train["label"], cv=folds)
    plain_r2 = r2_score(train["label"], plain)
    models = {n: meta[f"gas_{n}"] for n in ("hdd_linear", "ridge", "gbm")}
    assert {m["cv_folds_hash"].value for m in models.values()} == {models["hdd_linear"]["cv_folds_hash"].value}  # same folds
    assert models["hdd_linear"]["cv_r2"].value == pytest.approx(plain_r2, abs=1e-9)
    champ = models[pointer["model"]]
    report = {n: round(m["cv_r2"].value, 4) for n, m in models.items()}
    print(
        f"\ngas_meter 10-fold CV R²: champion {pointer['model']} {champ['cv_r2'].value:.4f}, plain HDD regression {plain_r2:.4f}; all {report}"
    )
    assert champ["cv_folds"].value == 10 and champ["cv_r2"].value >= plain_r2
    assert pointer["score"] == pytest.approx(min(m["cv_rmse"].value for m in models.values()))
    # the fitted signature finds the simulated one (base and slope per HDD)
    coef = LinearRegression().fit(train[["hdd"]], train["label"])
    truth = example["truth"]
    assert abs(coef.coef_[0] - truth["slope"]) < 0.5 and abs(coef.intercept_ - truth["base"]) < 2.5


def test_a_validation_winter_colder_than_training_is_reported(example):
    from lakehouse.ml import pipeline as fp

    evals = {e.check_name: e for e in example["result"].get_asset_check_evaluations()}
    check = evals["drivers_within_training_range"]
    split, _, _ = fp.read_table(example["lake"], "gas_split")
    feats, _, _ = fp.read_table(example["lake"], "gas_features")
    rows = split.merge(feats, on="day")
    train_min = rows.loc[rows["split"] == "train", "temperature_c"].min()
    colder = int((rows.loc[rows["split"] == "validation", "temperature_c"] < train_min).sum())
    assert colder > 0  # the simulated cold spell
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    ranges = check.metadata["ranges"].value
    assert ranges["temperature_c"]["validation_rows_outside"] >= colder and ranges["hdd"]["validation_rows_outside"] >= colder
    assert example["result"].success  # a warning: the champion is still chosen


def test_derived_heating_degrees_and_the_previous_day_rule(example):
    """The source's ``derive`` gives the trusted table its heating degrees (empty without a temperature),
    with lineage to the formatted temperature; the ``prev.`` rule counts the days that jump above three
    times the day before plus 100 kWh, found here independently from the delivered records."""
    lake, records = example["lake"], example["records"]
    trusted = lake.read_arrow("trusted", "gas_meter").to_pandas()
    temp = trusted["temperature_c"]
    expected = np.maximum(0.0, 16.5 - temp.to_numpy(dtype=float))
    assert np.allclose(trusted["heating_degrees_c"].to_numpy(dtype=float), expected, equal_nan=True)
    assert trusted["heating_degrees_c"].isna().sum() == MISSING_TEMPERATURE
    energy = [r["energy_kwh"] for r in records]  # every delivered day, in order (the rules see them all)
    jumps = {records[i]["time_period"][:7] for i in range(1, len(records)) if energy[i] > energy[i - 1] * 3 + 100}
    assert jumps == {records[SPIKE]["time_period"][:7]}
    metrics = lake.read_arrow("quality", "metrics").to_pandas()
    flagged = metrics[
        (metrics["dataset"] == "gas_meter") & (metrics["metric"] == "violations") & (metrics["rule"] == "energy_jump")
    ]
    assert flagged.groupby("month")["value"].sum().loc[lambda v: v > 0].to_dict() == {m: 1 for m in jumps}
    from lakehouse.factories.schema import derived_lineage
    from lakehouse.specs import load_project

    source = load_project(EXAMPLE, env={"LAKEHOUSE_ROOT": "/nowhere"}).source("gas_meter")
    (dep,) = derived_lineage(source).deps_by_column["heating_degrees_c"]
    assert (dep.asset_key.to_user_string(), dep.column_name) == ("formatted/gas_meter", "temperature_c")
