"""Reproduce a model from its lineage: time-travel to the recorded Delta versions, recompute, retrain.

    python -m lakehouse.ml.reproduce <model dir> [--lake <lake root>]

``<model dir>`` is a version folder written by an ML asset, e.g.
``.lakehouse/ml/consumption_gbm/models/v0003``. Its ``lineage.json`` names the input table and
the Delta version the model learned from, the parameters, the seed and the metrics. The command reads the
input *at that version* (even if the table has moved on since), recomputes features, labels and split,
checks their content hashes against the recorded ones, retrains with the same parameters and seed, and
prints recorded vs reproduced metrics. Exit status 0 when everything is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from lakehouse.io.lake import Lake
from lakehouse.io.storage import parse_root
from lakehouse.ml import anomaly
from lakehouse.ml import pipeline as fp
from lakehouse.ml.lineage import code_version, normalized_hash
from lakehouse.ml.models import read_json
from lakehouse.ml.train import single_threaded
from lakehouse.specs.ml import AnomalyParams, ForecastParams


@dataclass
class Reproduction:
    model_dir: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(c["same"] for c in self.checks)

    def add(self, what: str, recorded: Any, reproduced: Any, tolerance: float = 0.0) -> None:
        if isinstance(recorded, (int, float)) and isinstance(reproduced, (int, float)):
            same = recorded == reproduced or (
                tolerance > 0 and math.isclose(float(recorded), float(reproduced), rel_tol=tolerance, abs_tol=tolerance)
            )
        else:
            same = recorded == reproduced
        self.checks.append({"what": what, "recorded": recorded, "reproduced": reproduced, "same": bool(same)})

    def render(self) -> str:
        lines = [f"reproduce {self.model_dir}", *(f"  note: {n}" for n in self.notes)]
        width = max((len(c["what"]) for c in self.checks), default=10)
        for c in self.checks:
            fmt = lambda v: f"{v:.10g}" if isinstance(v, float) else str(v)[:16]  # noqa: E731
            lines.append(
                f"  {c['what']:<{width}}  recorded {fmt(c['recorded']):>18}  reproduced {fmt(c['reproduced']):>18}  {'same' if c['same'] else 'DIFFERENT'}"
            )
        lines.append("IDENTICAL" if self.identical else "NOT IDENTICAL")
        return "\n".join(lines)


def lake_of(model_dir: str) -> Lake:
    """The lake root holding ``<root>/ml/<pipeline>/models/[<model>/]vNNNN`` (a local path or a URI; an
    object store is reached with the project's ``storage:`` settings)."""
    text = str(model_dir).rstrip("/")
    if "/ml/" not in text:
        raise ValueError(f"{model_dir} is not inside a lake's ml/ folder: pass --lake")
    return _open_lake(text[: text.rindex("/ml/")])


def _open_lake(root: str) -> Lake:
    if "://" not in root:
        return Lake(root)
    from lakehouse import settings

    project = settings.load()
    return Lake(root, project.lakehouse.storage, env=settings.env())


def reproduce(model_dir: str, lake: Lake | None = None, tolerance: float = 0.0) -> Reproduction:
    import os

    model_dir = parse_root(str(model_dir), os.getcwd())  # absolute and normalized, as the lake's URIs are
    lake = lake or lake_of(model_dir)
    lineage = read_json(lake.storage, model_dir)
    out = Reproduction(model_dir)
    now = code_version()
    then = lineage.get("code_version", {})
    if isinstance(then, dict) and then.get("git_commit") and then.get("git_commit") != now.get("git_commit"):
        out.notes.append(f"code changed since training: {then.get('git_commit')} -> {now.get('git_commit')}")
    with single_threaded():
        if "model_type" in lineage:
            _forecast(lineage, lake, out, tolerance)
        elif "threshold" in lineage:
            _anomaly(lineage, lake, out, tolerance)
        else:
            raise ValueError(f"{model_dir}/lineage.json is neither a forecasting nor an anomaly model's lineage")
    return out


def _read_version(lake: Lake, table: str, version: int):
    try:
        return fp.read_input(lake, table, version=version)[0]
    except Exception as exc:
        raise RuntimeError(f"{table} version {version} cannot be read (vacuumed?): {type(exc).__name__}: {exc}") from exc


def _forecast(lineage: dict, lake: Lake, out: Reproduction, tolerance: float) -> None:
    params = ForecastParams.model_validate(lineage["params"])
    source = lineage["source"]
    version = lineage["inputs"][source]["delta_version"]
    out.notes.append(f"{source} read at Delta version {version} (latest: {lake.version(*source.split('/'))})")
    daily = _read_version(lake, source, version)
    feats = fp.features_from(daily, params)
    labels = fp.labels_from(daily, params)
    split, _ = fp.split_from(labels, params)
    hashes = lineage.get("data_hashes", {})
    for name, frame in (("features", feats), ("labels", labels), ("split", split)):
        out.add(f"{name} hash", (hashes.get(name) or "")[:16], normalized_hash(frame, params.columns.key)[:16])
    cfg = params.models[lineage["model"]]
    run = fp.fit_model(cfg, fp.dataset(feats, labels, split, params), params)
    for key, recorded in lineage["metrics"].items():
        out.add(key, recorded, run.metrics.get(key), tolerance)


def _anomaly(lineage: dict, lake: Lake, out: Reproduction, tolerance: float) -> None:
    ((source, info),) = [(k, v) for k, v in lineage["inputs"].items()]
    out.notes.append(f"{source} read at Delta version {info['delta_version']}")
    daily = _read_version(lake, source, info["delta_version"])
    cfg = AnomalyParams.model_validate(lineage["params"]).detector
    feats = anomaly.day_features(daily, cfg)
    detector = anomaly.fit(feats, cfg, int(lineage["seed"]))
    scores = anomaly.score(detector, feats)
    out.add("threshold", lineage["threshold"], detector.threshold_, tolerance)
    out.add("flagged_share", lineage["flagged_share"], float(scores["flagged"].mean()), tolerance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lakehouse.ml.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", help="the model's version folder (a local path or a URI)")
    parser.add_argument("--lake", help="lake root (default: found from the model folder)")
    parser.add_argument("--tolerance", type=float, default=0.0, help="relative tolerance for metrics (default: exact)")
    args = parser.parse_args(argv)
    result = reproduce(args.model_dir, _open_lake(args.lake) if args.lake else None, args.tolerance)
    print(result.render())
    return 0 if result.identical else 1


if __name__ == "__main__":
    sys.exit(main())
