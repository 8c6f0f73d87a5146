"""Score the lakehouse's analyses against the demo world's ground truth (never imported by lakehouse code).

    python -m lakehouse.sim.scores --lake .lakehouse --world .demo

- **Forecast vs physical limit**: the champion's validation RMSE (its ``validation_predictions.csv``)
  divided by the RMSE of the noise the simulator added on the *same* validation meter-days
  (``truth/consumption_truth.csv``, ``noise_kwh``) — no model can beat ratio 1.0 on average.
- **Anomaly detection**: flagged meter-days (``ml/<prefix>_flags``) against the meter-days on which the
  simulator injected a fault (``truth/faults.csv``, any kind; a fault's UTC day): precision, recall, F1,
  and recall per fault kind.
- **Reconciliation**: the (registry customer, billing account) pairs of ``exploitation/golden_customers``
  against ``truth/customer_matches.csv``: precision and recall.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lakehouse.io.lake import Lake
from lakehouse.ml.models import read_file


def _delta(lake: Lake, zone: str, table: str) -> pd.DataFrame | None:
    return lake.read_arrow(zone, table).to_pandas() if lake.exists(zone, table) else None


def forecast_ratio(lake: Lake, world: Path) -> list[dict[str, Any]]:
    """One entry per forecasting pipeline with a champion."""
    truth = pd.read_csv(world / "truth" / "consumption_truth.csv", usecols=["device_id", "date", "noise_kwh", "actual_kwh"])
    truth = truth.rename(columns={"device_id": "meter_id", "actual_kwh": "true_kwh"})
    out = []
    for asset in lake.storage.folders(lake.storage.uri("ml")):
        try:
            champ = json.loads(lake.storage.read(lake.uri("ml", asset, "champion.json")))
        except FileNotFoundError:
            continue
        model_dir = champ["model_dir"]
        pred = pd.read_csv(io.BytesIO(read_file(lake.storage, model_dir, "validation_predictions.csv")), dtype={"date": str})
        both = pred.merge(truth, on=["meter_id", "date"], how="inner")
        if len(both) != len(pred):
            raise ValueError(f"{len(pred) - len(both)} validation meter-days of {model_dir} are missing from the truth")
        rmse = float(np.sqrt(np.mean((both["predicted"] - both["actual"]) ** 2)))
        noise = float(np.sqrt(np.mean(both["noise_kwh"] ** 2)))
        # how far the labels the model was scored on are from what the meters really recorded
        label_err = float(np.sqrt(np.mean((both["actual"] - both["true_kwh"]) ** 2)))
        out.append(
            {
                "pipeline": asset,
                "champion": champ["model"],
                "model_dir": model_dir,
                "validation_meter_days": len(both),
                "validation_rmse_kwh": rmse,
                "noise_rmse_kwh": noise,
                "ratio": rmse / noise,
                "label_vs_truth_rmse_kwh": label_err,
            }
        )
    return out


def _faulty_days(world: Path) -> pd.DataFrame:
    faults = pd.read_csv(world / "truth" / "faults.csv", dtype=str)
    faults["date"] = faults["ts"].str[:10]
    faults = faults.rename(columns={"device_id": "meter_id"})
    return faults.groupby(["meter_id", "date"])["kind"].agg(lambda s: ",".join(sorted(set(s)))).rename("kinds").reset_index()


def _prf(flag: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = int((flag & truth).sum())
    p = tp / flag.sum() if flag.sum() else 0.0
    r = tp / truth.sum() if truth.sum() else 0.0
    return {
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "flagged": int(flag.sum()),
        "faulty": int(truth.sum()),
    }


def anomaly_scores(lake: Lake, world: Path) -> list[dict[str, Any]]:
    """One entry per anomaly flags table (``ml/*_flags``)."""
    out = []
    for name in [t for t in lake.storage.folders(lake.storage.uri("ml")) if t.endswith("_flags")]:
        flags = _delta(lake, "ml", name)
        if flags is None or flags.empty:
            continue
        flags["date"] = flags["date"].astype(str)
        df = flags[["meter_id", "date", "flagged", "score"]].merge(_faulty_days(world), on=["meter_id", "date"], how="left")
        faulty = df["kinds"].notna().to_numpy()
        flag = df["flagged"].astype(bool).to_numpy()
        per_kind = {}
        for kind in sorted({k for ks in df["kinds"].dropna() for k in ks.split(",")}):
            sel = df["kinds"].fillna("").str.split(",").apply(lambda ks, k=kind: k in ks).to_numpy()
            per_kind[kind] = {"days": int(sel.sum()), "recall": float(flag[sel].mean())}
        no_wh = ~df["kinds"].fillna("").eq("wh_unit").to_numpy()
        out.append(
            {
                "table": f"ml/{name}",
                "meter_days": len(df),
                **_prf(flag, faulty),
                "f1_without_wh_unit_days": _prf(flag[no_wh], faulty[no_wh])["f1"],
                "recall_by_kind": per_kind,
            }
        )
    return out


def reconciliation_scores(lake: Lake, world: Path) -> dict[str, Any] | None:
    golden = _delta(lake, "exploitation", "golden_customers")
    truth_path = world / "truth" / "customer_matches.csv"
    if golden is None or not truth_path.exists():
        return None
    truth = pd.read_csv(truth_path, dtype=str).fillna("")
    true_pairs = set(map(tuple, truth.loc[truth["kind"] == "match", ["customer_id", "account_no"]].to_numpy()))
    pred: set[tuple[str, str]] = set()
    for reg, accounts in golden[["registry_id", "billing_ids"]].itertuples(index=False):
        if reg and isinstance(accounts, str):
            pred.update((reg, a) for a in accounts.split(";") if a)
    # score only accounts the lakehouse has seen (a later export may add accounts)
    seen = {a for ids in golden["billing_ids"].dropna() for a in ids.split(";")}
    true_pairs = {(c, a) for c, a in true_pairs if a in seen}
    tp = len(pred & true_pairs)
    return {
        "golden_customers": len(golden),
        "predicted_pairs": len(pred),
        "true_pairs": len(true_pairs),
        "precision": tp / len(pred) if pred else 0.0,
        "recall": tp / len(true_pairs) if true_pairs else 0.0,
        "false_matches": sorted(pred - true_pairs)[:10],
        "missed_matches": sorted(true_pairs - pred)[:10],
    }


def summary_lines(lake: Lake, world: Path) -> list[str]:
    """The demo summary's lines on the analyses, scored against the world's truth (a section that cannot
    be scored says why instead of stopping the others)."""
    lines = []
    for section in (_forecast_lines, _anomaly_lines, _reconciliation_lines):
        try:
            lines += section(lake, world)
        except Exception as exc:  # noqa: BLE001 - the summary reports, it does not fail the demo
            lines.append(f"  {section.__name__.strip('_').replace('_lines', '')}: not scored ({type(exc).__name__}: {exc})")
    return lines or ["  (no analysis output found to score)"]


def _forecast_lines(lake: Lake, world: Path) -> list[str]:
    lines = []
    for f in forecast_ratio(lake, world):
        lines.append(
            f"  forecast {f['pipeline']}: champion {f['champion']} validation RMSE {f['validation_rmse_kwh']:.2f} kWh/day"
            f" / irreducible noise {f['noise_rmse_kwh']:.2f} = ratio {f['ratio']:.3f} (target <= 1.10)"
            f" over {f['validation_meter_days']} meter-days"
        )
    return lines


def _anomaly_lines(lake: Lake, world: Path) -> list[str]:
    lines = []
    for a in anomaly_scores(lake, world):
        kinds = ", ".join(f"{k} {v['recall']:.2f}" for k, v in a["recall_by_kind"].items())
        lines.append(
            f"  anomalies {a['table']}: F1 {a['f1']:.3f} (precision {a['precision']:.3f}, recall {a['recall']:.3f};"
            f" {a['flagged']} flagged, {a['faulty']} faulty of {a['meter_days']} meter-days; target F1 >= 0.90)"
        )
        lines.append(f"    recall by fault kind: {kinds}; F1 without Wh-unit days {a['f1_without_wh_unit_days']:.3f}")
    return lines


def _reconciliation_lines(lake: Lake, world: Path) -> list[str]:
    r = reconciliation_scores(lake, world)
    if r is None:
        return []
    return [
        f"  reconciliation: precision {r['precision']:.3f}, recall {r['recall']:.3f}"
        f" ({r['predicted_pairs']} matched pairs, {r['true_pairs']} true; {r['golden_customers']} golden customers)"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lakehouse.sim.scores", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake", default=None, help="lake root (default: the project's, from lakehouse.yaml)")
    parser.add_argument("--world", type=Path, default=Path(".demo"))
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    from lakehouse import settings

    project = settings.load()
    args.lake = Lake(args.lake or project.lake_root, project.lakehouse.storage, env=settings.env())
    if args.json:
        print(
            json.dumps(
                {
                    "forecast": forecast_ratio(args.lake, args.world),
                    "anomaly": anomaly_scores(args.lake, args.world),
                    "reconciliation": reconciliation_scores(args.lake, args.world),
                },
                indent=1,
                default=str,
            )
        )
    else:
        print("\n".join(summary_lines(args.lake, args.world)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
