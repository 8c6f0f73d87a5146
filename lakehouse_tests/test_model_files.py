"""Model files (issue 26, finding 4): stored without pickle, verified by sha256 before any load, referenced
relative to the lake. Tiny models on synthetic rows; each test can fail."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import torch
from sklearn.base import BaseEstimator, RegressorMixin

from lakehouse.io.lake import Lake
from lakehouse.ml import anomaly, champion, train
from lakehouse.ml.models import (
    ModelFileError,
    ModelIntegrityError,
    UntrustedModelError,
    load_model,
    read_file,
    read_json,
    ref_of,
    resolve,
    save_model,
)
from lakehouse.specs.ml import Columns

FEATURES = ["hdd", "temp", "kind"]


@pytest.fixture(scope="module")
def rows() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 200
    X = pd.DataFrame(
        {
            "hdd": rng.normal(5, 2, n),
            "temp": rng.normal(10, 3, n),
            "kind": rng.choice(["a", "b"], n),
            "sig_pred": rng.uniform(5, 10, n),
        }
    )
    X.loc[::17, "hdd"] = np.nan
    return X, (10 + X["hdd"].fillna(0) * 2 + rng.normal(0, 1, n)).to_numpy()


def fitted(kind: str, rows, baseline: str | None = None):
    X, y = rows
    params = {"epochs": 2, "hidden": [8]} if kind == "torch_mlp" else {"max_iter": 5} if kind == "sklearn_gbm" else {}
    return train.fit(kind, X, y, FEATURES, params, 0, baseline, ["kind"])


def detector():
    rng = np.random.default_rng(1)
    days = pd.date_range("2012-01-01", periods=60)
    daily = pd.DataFrame(
        {
            "meter_id": np.repeat(["M1", "M2"], 60),
            "date": np.tile(days, 2),
            "month": np.tile(days.strftime("%Y-%m"), 2),
            "kwh": rng.uniform(5, 20, 120),
            "temp": rng.normal(8, 5, 120),
            "raw": rng.uniform(5, 20, 120),
            "pc": 24,
        }
    )
    cfg = anomaly.AnomalyConfig(
        profile={"total": "raw", "periods_covered": "pc"},
        features=("missing_periods", "cleaning_log_ratio", "signature_log_ratio"),
        max_samples=64,
        n_estimators=20,
        columns=Columns(entity=("meter_id",), time="date", target="kwh", temperature="temp"),
    )
    feats = anomaly.day_features(daily, cfg)
    return anomaly.fit(feats, cfg, 0), feats


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


def folder(lake: Lake, name: str = "consumption_gbm") -> str:
    return lake.uri("ml", name, "models")


@pytest.mark.parametrize(
    "kind,baseline",
    [
        ("sklearn_gbm", None),
        ("sklearn_ridge", "sig_pred"),
        ("sklearn_linear", None),
        ("torch_mlp", None),
        ("torch_mlp", "sig_pred"),
    ],
)
def test_every_model_kind_round_trips_without_pickle(lake, rows, kind, baseline):
    model = fitted(kind, rows, baseline)
    version = save_model(lake.storage, folder(lake), model, {"model": kind})
    files = sorted(p.name for p in Path(version).iterdir())
    assert "model.joblib" not in files and "model.skops" in files
    assert ({"nets.pt", "nets.json"} <= set(files)) == (kind == "torch_mlp")
    loaded, lineage = load_model(lake.storage, version)
    assert lineage["model"] == kind and set(lineage["files"]) == set(files) - {"lineage.json", "_claim"}
    np.testing.assert_array_equal(loaded.predict(rows[0]), model.predict(rows[0]))
    # the file itself is a zip of JSON schemas: no pickle opcode stream inside
    assert Path(version, "model.skops").read_bytes()[:2] == b"PK"


def test_anomaly_detector_round_trips(lake):
    det, feats = detector()
    version = save_model(lake.storage, folder(lake, "meter_model"), det, {"threshold": det.threshold_})
    loaded, _ = load_model(lake.storage, version)
    np.testing.assert_array_equal(loaded.scores(feats), det.scores(feats))


def test_a_tampered_model_file_is_refused_naming_it(lake, rows):
    version = save_model(
        lake.storage, folder(lake), fitted("sklearn_ridge", rows), {}, lambda d: (d / "metrics.json").write_text('{"rmse": 1.0}')
    )
    path = Path(version, "model.skops")
    other = save_model(lake.storage, folder(lake), fitted("sklearn_linear", rows), {})
    path.write_bytes(Path(other, "model.skops").read_bytes())  # a valid model, just not the one saved here
    with pytest.raises(ModelIntegrityError, match=rf"{path}: sha256 \w+ differs from \w+ recorded in lineage.json"):
        load_model(lake.storage, version)
    # the version's other files are verified too
    Path(version, "metrics.json").write_text('{"rmse": 0.001}')
    with pytest.raises(ModelIntegrityError, match="metrics.json"):
        read_json(lake.storage, version, "metrics.json")


def test_torch_weights_are_loaded_with_weights_only(lake, rows):
    """A nets.pt that pickles code is refused even with its sha256 rewritten to match (a lake writer)."""
    version = save_model(lake.storage, folder(lake, "consumption_mlp"), fitted("torch_mlp", rows), {})

    class Payload:
        def __reduce__(self):
            return (Path(version, "pwned").write_text, ("ran",))

    buf = io.BytesIO()
    torch.save({"model.model": Payload()}, buf)
    _forge(Path(version), "nets.pt", buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(lake.storage, version)
    assert not Path(version, "pwned").exists()


class Stranger(RegressorMixin, BaseEstimator):
    """A type no pipeline of the lakehouse produces."""

    def fit(self, X, y):
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X):
        return np.full(len(X), self.mean_)


def test_an_unknown_type_is_refused_at_save_and_at_load(lake, rows):
    X, y = rows
    with pytest.raises(UntrustedModelError, match=r"test_model_files.Stranger"):
        save_model(lake.storage, folder(lake), Stranger().fit(X, y), {})
    assert not list(Path(folder(lake)).glob("*/lineage.json"))  # nothing became a version
    # a lake writer swaps in a file naming that type and rewrites its sha256: the loader builds nothing
    version = save_model(lake.storage, folder(lake), fitted("sklearn_linear", rows), {})
    _forge(Path(version), "model.skops", sio.dumps(Stranger().fit(X, y)))
    with pytest.raises(
        UntrustedModelError, match=r"model.skops: refuses type\(s\) \['lakehouse_tests.test_model_files.Stranger'\]"
    ):
        load_model(lake.storage, version)


def test_an_old_pickled_version_is_not_loaded(lake):
    version = Path(folder(lake), "v0001")
    version.mkdir(parents=True)
    (version / "model.joblib").write_bytes(b"\x80\x04K\x01.")
    (version / "lineage.json").write_text(json.dumps({"inputs": {}}))
    with pytest.raises(ModelFileError, match="no model.skops recorded .* train the model again"):
        load_model(lake.storage, str(version))


def test_references_are_relative_to_the_lake_and_contained(lake, tmp_path, rows):
    version = save_model(lake.storage, folder(lake), fitted("sklearn_ridge", rows), {})
    ref = ref_of(lake.storage, version)
    assert ref == "ml/consumption_gbm/models/v0001"
    assert resolve(lake.storage, ref) == version == resolve(lake.storage, version)  # an older absolute pointer inside the lake
    outside = tmp_path / "elsewhere" / "ml" / "consumption_gbm" / "models" / "v0001"
    for bad in (
        str(outside),
        "ml/../../elsewhere/models/v0001",
        "ml/consumption_gbm/models/v0001/../../../../x/models/v0001",
        "landing/consumption_gbm/models/v0001",
        "ml/consumption_gbm/v0001",
        "/etc/passwd",
    ):
        with pytest.raises(ModelFileError):
            load_model(lake.storage, bad)


def test_a_moved_lake_loads_its_own_champion(tmp_path, rows):
    lake = Lake(tmp_path / "old")
    model = fitted("sklearn_gbm", rows)
    version = save_model(lake.storage, folder(lake), model, {}, lambda d: (d / "validation_predictions.csv").write_text("a\n1\n"))
    pointer = lake.uri("ml", "consumption_champion", "champion.json")
    champion.write_pointer(lake.storage, pointer, {"model": "gbm", "model_dir": ref_of(lake.storage, version)})
    shutil.move(tmp_path / "old", tmp_path / "restored")
    moved = Lake(tmp_path / "restored")
    record = champion.read_pointer(moved.storage, moved.uri("ml", "consumption_champion", "champion.json"))
    loaded, _ = load_model(moved.storage, record["model_dir"])
    np.testing.assert_array_equal(loaded.predict(rows[0]), model.predict(rows[0]))
    assert read_file(moved.storage, record["model_dir"], "validation_predictions.csv") == b"a\n1\n"
    # a pointer that still names the old place is refused, not followed
    with pytest.raises(ModelFileError, match="outside this lake"):
        load_model(moved.storage, version)


def _forge(version: Path, name: str, data: bytes) -> None:
    """What someone who can write the lake can do: replace a file and its recorded sha256."""
    import hashlib

    (version / name).write_bytes(data)
    lineage = json.loads((version / "lineage.json").read_text())
    lineage["files"][name] = hashlib.sha256(data).hexdigest()
    (version / "lineage.json").write_text(json.dumps(lineage))


def test_two_trainings_saving_at_once_get_their_own_versions(lake, rows, monkeypatch):
    """Both trainings list the folder before either claims a number (the race of two runs): each still gets
    its own version, holding its own model and lineage."""
    import threading

    from lakehouse.ml import models

    listed = threading.Barrier(2)
    real = models._numbers

    def numbers_listed_together(storage, folder_uri):
        found = real(storage, folder_uri)
        listed.wait(timeout=30)  # neither has claimed yet when both have listed
        return found

    monkeypatch.setattr(models, "_numbers", numbers_listed_together)
    fits = {kind: fitted(kind, rows) for kind in ("sklearn_ridge", "sklearn_linear")}
    saved: dict[str, str] = {}

    def train(kind: str) -> None:
        saved[kind] = save_model(lake.storage, folder(lake), fits[kind], {"model": kind})

    threads = [threading.Thread(target=train, args=(k,)) for k in fits]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    monkeypatch.setattr(models, "_numbers", real)
    assert sorted(saved.values()) == [f"{folder(lake)}/v0001", f"{folder(lake)}/v0002"]
    X, _ = rows
    for kind, version in saved.items():
        model, lineage = load_model(lake.storage, version)
        assert lineage["model"] == kind
        np.testing.assert_array_equal(model.predict(X), fits[kind].predict(X))
