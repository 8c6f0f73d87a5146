"""ML assets from ``configs/ml/<pipeline>.yaml``; ``kind`` selects the builder.

``consumption_forecast``  features → labels → split (+ leakage check) → one asset per model → champion
                          (+ gates) → monthly predictions
``meter_anomaly``         drift (+ warning check) → anomaly detector → monthly flagged meter-days

Assets that learn from history depend on every month of their input (``AllPartitionMapping``) and read
Delta directly, recording the version they read; derived tables are written with their lineage in the
Delta commit, models as versioned folders under ``ml/<pipeline>/models/``.
"""


import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from lakehouse.factories.common import LakeResource, escape_md, key, monthly, months_of, spec_version
from lakehouse.io.lake import Lake
from lakehouse.ml import anomaly, champion, consumption, drift, evaluate, forecast
from lakehouse.ml import pipeline as fp
from lakehouse.ml.lineage import code_version, normalized_hash
from lakehouse.ml.models import ModelFileError, load_model, read_json, ref_of, resolve, save_model, version_name, versions
from lakehouse.ml.train import single_threaded
from lakehouse.specs.models import PipelineSpec, Project


def _md_images(root: Lake, uris: dict[str, str]) -> dg.MetadataValue:
    return dg.MetadataValue.md("\n\n".join(f"**{name}**\n\n{evaluate.embed_png(root.storage.read(u), name)}" for name, u in uris.items()))


def _table(df: pd.DataFrame, digits: int = 4) -> dg.TableMetadataValue:
    """A frame as Dagster table metadata (typed columns, sortable in the UI) instead of a Markdown table."""
    kinds = {}
    for col, dtype in df.dtypes.items():
        kinds[col] = ("bool" if pd.api.types.is_bool_dtype(dtype) else "int" if pd.api.types.is_integer_dtype(dtype)
                      else "float" if pd.api.types.is_float_dtype(dtype) else "string")

    def cell(value, kind):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if kind == "float":
            return round(float(value), digits)
        return int(value) if kind == "int" else bool(value) if kind == "bool" else str(value)

    records = [dg.TableRecord({str(c): cell(v, kinds[c]) for c, v in zip(df.columns, row, strict=True)})
               for row in df.itertuples(index=False)]
    schema = dg.TableSchema(columns=[dg.TableColumn(str(c), k) for c, k in kinds.items()])
    return dg.MetadataValue.table(records, schema=schema)


def _num(v):
    return float(v) if isinstance(v, (float, np.floating)) else int(v) if isinstance(v, (int, np.integer)) else v


# ====================================================================================================
# consumption_forecast
# ====================================================================================================
def build_consumption_forecast(project: Project, spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    """Every asset of one forecasting pipeline (each factory call builds its own assets)."""
    params = fp.ForecastParams.of(spec.params)
    prefix = spec.params.get("prefix", spec.name)
    zone, table = spec.input.split("/")
    source_key = key(zone, table)
    t_features, t_labels, t_split = f"{prefix}_features", f"{prefix}_labels", f"{prefix}_split"
    k_features, k_labels, k_split = key("ml", t_features), key("ml", t_labels), key("ml", t_split)
    k_champion, k_predictions = key("ml", f"{prefix}_champion"), key("ml", f"{prefix}_predictions")
    # one folder per asset, like every table: ml/<prefix>_<model>/models/vNNNN, ml/<prefix>_champion/
    models_root = lambda lake, name: lake.uri("ml", f"{prefix}_{name}", "models")  # noqa: E731
    pointer = lambda lake: lake.uri("ml", f"{prefix}_champion", "champion.json")  # noqa: E731
    all_months = {"daily": dg.AssetIn(key=source_key, partition_mapping=dg.AllPartitionMapping(), dagster_type=dg.Nothing)}
    common = {"group_name": "ml", "tags": {"zone": "ml", "pipeline": spec.name}, "code_version": spec_version(spec)}

    @dg.asset(
        key=k_features,
        ins=all_months,
        description=f"Features per {' and '.join([*params.columns.entity, 'day'])} from every month of {spec.input}: "
        "drivers and HDD/CDD, the columns the pipeline carries, and target history (lags, rolling means, energy "
        "signature) from earlier days only.",
        kinds={"pandas", "delta"},
        **common,
    )
    def _features(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        daily, version = fp.read_input(root, spec.input)
        feats = fp.features_from(daily, params)
        lineage = {
            "inputs": fp.input_lineage(spec.input, version, sorted(daily["month"].unique())),
            "code_version": code_version(),
            "params": {"features": spec.params.get("features", {}), "labels": spec.params.get("labels", {})},
            "hash": normalized_hash(feats, params.columns.key),
        }
        out_version = fp.write_table(root, t_features, feats, lineage)
        return dg.MaterializeResult(
            metadata={
                "rows": len(feats),
                "features": [c for c in feats.columns if c not in (*params.columns.key, "month")],
                "delta_version": out_version,
                "input_delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
                "dagster/row_count": len(feats),
            }
        )

    @dg.asset(
        key=k_labels,
        ins=all_months,
        description=f"Labels: each day's `{params.columns.target}`, and whether it is a trustworthy label (its "
        "drivers present and every declared label rule holding); an excluded day names the rule it broke.",
        kinds={"pandas", "delta"},
        **common,
    )
    def _labels(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        daily, version = fp.read_input(root, spec.input)
        labels = fp.labels_from(daily, params)
        lineage = {
            "inputs": fp.input_lineage(spec.input, version, sorted(daily["month"].unique())),
            "code_version": code_version(),
            "params": {"labels": spec.params.get("labels", {})},
            "hash": normalized_hash(labels, params.columns.key),
        }
        out_version = fp.write_table(root, t_labels, labels, lineage)
        reasons = labels.loc[~labels["label_ok"], "reason"].value_counts().to_dict()
        return dg.MaterializeResult(
            metadata={
                "rows": len(labels),
                "label_ok": int(labels["label_ok"].sum()),
                "excluded_by_reason": dg.MetadataValue.json({k: int(v) for k, v in reasons.items()}),
                "delta_version": out_version,
                "input_delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
            }
        )

    leak_check, range_check = "no_validation_leak", "drivers_within_training_range"

    @dg.asset(
        key=k_split,
        deps=[k_features, k_labels],
        description="Time-based split: the last months validate, earlier months train (every validation day "
        "after every training day). The blocking check proves no validation day reached a training feature.",
        kinds={"pandas", "delta"},
        check_specs=[
            dg.AssetCheckSpec(
                leak_check,
                asset=k_split,
                blocking=True,
                description="Training features recomputed from the history cut at the first validation day are "
                "identical to the stored ones; no training day on/after the cut; no row in both sets.",
            ),
            dg.AssetCheckSpec(
                range_check,
                asset=k_split,
                description="Every validation row's drivers (temperature, HDD/CDD, declared drivers) lie within the "
                "training range (warns: models, trees above all, extrapolate poorly).",
            ),
        ],
        **common,
    )
    def _split(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        labels, lab_lineage, lab_version = fp.read_table(root, t_labels)
        feats, feat_lineage, feat_version = fp.read_table(root, t_features)
        split, info = fp.split_from(labels, params)
        src = feat_lineage["inputs"][spec.input]["delta_version"]
        if lab_lineage["inputs"][spec.input]["delta_version"] != src:
            raise dg.Failure(
                f"features (from {spec.input} v{src}) and labels (v{lab_lineage['inputs'][spec.input]['delta_version']}) "
                "were computed from different versions: materialize both again"
            )
        lineage = {
            "inputs": {
                spec.input: {"delta_version": src},
                f"ml/{t_features}": {"delta_version": feat_version},
                f"ml/{t_labels}": {"delta_version": lab_version},
            },
            "code_version": code_version(),
            "params": {"split": spec.params.get("split", {})},
            "cut": info,
            "hash": normalized_hash(split, params.columns.key),
        }
        version = fp.write_table(root, t_split, split, lineage)
        # the proof: recompute the training features in a world where the validation days never happened
        daily, _ = fp.read_input(root, spec.input, version=src)
        report = fp.leakage_from(daily, feats, split, info["cut_date"], params)
        context.log.info(f"leakage check: {report}")
        ranges = fp.extrapolation_from(feats, split, params)
        outside = {d: r["validation_rows_outside"] for d, r in ranges.items() if r["validation_rows_outside"]}
        return dg.MaterializeResult(
            metadata={
                **{k: dg.MetadataValue.json(v) if isinstance(v, list) else v for k, v in info.items()},
                "delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=leak_check,
                    passed=report.passed,
                    metadata={
                        "train_rows_checked": report.train_rows_checked,
                        "leaking_rows": report.leaking_rows,
                        "leaking_features": dg.MetadataValue.json(report.leaking_features),
                        "overlap_rows": report.overlap_rows,
                        "train_days_on_or_after_cut": report.train_after_cut,
                        "cut_date": info["cut_date"],
                        "samples": dg.MetadataValue.json(json.loads(json.dumps(report.samples, default=str))),
                    },
                ),
                dg.AssetCheckResult(
                    check_name=range_check,
                    passed=not outside,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=("validation rows outside the training range: " + ", ".join(f"{d}: {n}" for d, n in outside.items()))
                    if outside else "every validation driver lies within the training range",
                    metadata={"ranges": dg.MetadataValue.json(ranges), "rows_outside": dg.MetadataValue.json(outside)},
                ),
            ],
        )

    model_assets = [_model_asset(spec, params, name, k_split, t_features, t_labels, t_split, models_root, prefix) for name in params.models]
    model_keys = [a.key for a in model_assets]
    drift_table = params.champion.get("drift_table")
    drift_deps = [key(*drift_table.split("/"))] if drift_table else []
    gate_check, drift_check = "not_worse_than_current", "no_severe_drift"

    @dg.asset(
        key=k_champion,
        deps=[*model_keys, *drift_deps],
        description=f"The model to deploy: the candidate with the lowest {params.champion_metric} (every candidate "
        "scored on the same rows, or the same CV folds). Promoted only when it is not worse than the current "
        "champion on the same rows and no severe drift was detected.",
        kinds={"python"},
        check_specs=[
            dg.AssetCheckSpec(gate_check, asset=k_champion, blocking=True,
                              description="The new champion's validation RMSE is not worse than the current one's."),
            dg.AssetCheckSpec(drift_check, asset=k_champion, blocking=True,
                              description="No severe drift (PSI) in the months the champion is validated on or serves."),
        ],
        **common,
    )
    def _champion(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        tolerance = float(params.champion.get("tolerance", 0.0))
        metric = params.champion_metric
        cands = []
        for name in params.models:
            found = versions(root.storage, models_root(root, name))
            if not found:
                raise dg.Failure(f"model {name} has no trained version yet")
            metrics = read_json(root.storage, found[-1], "metrics.json")
            if metric not in metrics:
                raise dg.Failure(f"model {name} ({version_name(found[-1])}) has no {metric}: retrain it with the current config")
            cands.append(champion.Candidate(name, str(found[-1]), float(metrics[metric]), metrics))
        split_versions = {read_json(root.storage, c.model_dir)["inputs"][f"ml/{t_split}"]["delta_version"] for c in cands}
        if len(split_versions) > 1:
            raise dg.Failure(f"candidates were validated on different splits {sorted(split_versions)}: retrain them together")
        fold_sets = {c.metrics.get("cv_folds_hash") for c in cands}
        if metric == "cv_rmse" and len(fold_sets) > 1:
            raise dg.Failure(f"candidates were cross-validated on different folds {sorted(map(str, fold_sets))}: retrain them together")
        best = pick = champion.pick(cands)
        current = champion.read_pointer(root.storage, pointer(root))
        current_rmse = None
        if current is not None:
            try:
                current_dir = resolve(root.storage, current["model_dir"])
            except ModelFileError as exc:  # e.g. a pointer into another lake: it cannot be re-scored here
                context.log.warning(f"current champion: {exc}")
                current_dir = None
            if current_dir == best.model_dir:
                current_rmse = best.rmse
            elif metric == "cv_rmse" and current.get("metrics", {}).get("cv_folds_hash") == best.metrics.get("cv_folds_hash"):
                current_rmse = float(current["metrics"]["cv_rmse"])  # the same folds: the recorded scores compare
            else:
                current_rmse = _rescore(root, current, best.model_dir, t_features, t_labels, t_split, context)
                if metric != "rmse":  # other folds: compare on the candidate's validation rows instead
                    best = champion.Candidate(best.name, best.model_dir, float(best.metrics["rmse"]), best.metrics)
        gate = champion.not_worse(best.rmse, current_rmse, tolerance)
        drift_ok, drift_meta = _drift_gate(root, drift_table, best.model_dir, params.champion)
        promoted = gate.passed and drift_ok
        record = {
            "model": pick.name,
            "model_dir": ref_of(root.storage, pick.model_dir),  # relative to the lake: a moved lake finds it
            "rmse": float(pick.metrics["rmse"]),
            "metric": metric,
            "score": pick.rmse,
            "metrics": pick.metrics,
            "run_id": context.run_id,
        }
        if promoted:
            champion.write_pointer(root.storage, pointer(root), record)
        shown = ("rmse", "mae", "r2", "cv_rmse", "cv_r2")
        table = pd.DataFrame([{"model": c.name, "version": version_name(c.model_dir), **{k: c.metrics.get(k, float("nan")) for k in shown}} for c in cands])
        return dg.MaterializeResult(
            metadata={
                "champion": pick.name,
                "model_dir": ref_of(root.storage, pick.model_dir),
                "rmse": float(pick.metrics["rmse"]),
                "metric": metric,
                "score": pick.rmse,
                "promoted": promoted,
                "current_champion_rmse": current_rmse if current_rmse is not None else "none",
                "candidates": _table(table, 4),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=gate_check,
                    passed=gate.passed,
                    description=gate.reason,
                    metadata={"candidate_rmse": gate.candidate_rmse, "current_rmse": gate.current_rmse if gate.current_rmse is not None else "none",
                              "tolerance": tolerance},
                ),
                dg.AssetCheckResult(check_name=drift_check, passed=drift_ok, metadata=drift_meta),
            ],
        )

    @dg.asset(
        key=k_predictions,
        deps=[k_champion],
        ins={
            "daily": dg.AssetIn(
                key=source_key,
                partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-13, end_offset=0, allow_nonexistent_upstream_partitions=True),
                dagster_type=dg.Nothing,
            )
        },
        partitions_def=monthly(project),
        backfill_policy=dg.BackfillPolicy.single_run(),
        description="Day-ahead consumption predictions of the current champion for each meter and day of the "
        "month (features from the 13 months before it). `sample` says whether the month was training, "
        "validation or new data for the model; `has_history` is false in a meter's first weeks (no energy "
        "signature yet, the prediction is a fallback).",
        kinds={"python", "delta"},
        **common,
    )
    def _predictions(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        current = champion.read_pointer(root.storage, pointer(root))
        if current is None:
            raise dg.Failure("no champion has been promoted yet: materialize the champion first")
        model_dir = resolve(root.storage, current["model_dir"])
        model, lineage = load_model(root.storage, model_dir)
        cols = fp.ModelConfig.of(lineage["model"], lineage["params"]["models"][lineage["model"]]).columns
        run_params = fp.ForecastParams.of(lineage["params"])
        months = months_of(context)
        src_zone, src_table = spec.input.split("/")
        available = root.months(src_zone, src_table)
        first = (pd.Period(months[0], freq="M") - 13).strftime("%Y-%m")
        window = [m for m in available if first <= m <= months[-1]]
        version = root.version(src_zone, src_table)
        daily = root.read_arrow(src_zone, src_table, months=window, version=version).to_pandas()
        feats = fp.features_from(daily, run_params)
        labels = fp.labels_from(daily, run_params)
        train_months = set(lineage.get("split", {}).get("train_months", []))
        valid_months = set(lineage.get("split", {}).get("validation_months", []))
        per_month = []
        for month in months:
            f = feats[feats["month"] == month]
            if f.empty:
                continue
            run_key = run_params.columns.key
            lab = labels[labels["month"] == month][[*run_key, forecast.LABEL, "label_ok"]]
            with single_threaded():
                pred = model.predict(f[cols])
            out = f[[*run_key, "month"]].copy()
            out["predicted"] = pred
            # a series' first weeks have no energy signature (or history) yet: such predictions are marked
            history = [c for c in ("sig_pred", *(f"lag_{k}" for k in run_params.features.lags)) if c in f.columns][:1]
            out["has_history"] = f[history[0]].notna().to_numpy() if history else True
            out = out.merge(lab, on=run_key, how="left").rename(columns={forecast.LABEL: "actual"})
            out["model"] = lineage["model"]
            out["model_version"] = version_name(model_dir)
            out["sample"] = "train" if month in train_months else "validation" if month in valid_months else "new"
            v = root.overwrite_month("ml", f"{prefix}_predictions", pa.Table.from_pandas(out, preserve_index=False), month)
            ok = out[out["label_ok"].fillna(False).astype(bool) & out["has_history"]]
            rmse = float(np.sqrt(np.mean((ok["predicted"] - ok["actual"]) ** 2))) if len(ok) else float("nan")
            per_month.append({"month": month, "rows": len(out), "rmse": rmse, "sample": out["sample"].iloc[0], "delta_version": v})
            # the month's own figures; the range's are in the run's log
            context.add_asset_metadata(
                {"rows": len(out), "dagster/row_count": len(out), "rmse": rmse, "sample": out["sample"].iloc[0], "delta_version": v},
                partition_key=month,
            )
        context.log.info(f"ml/{prefix}_predictions: {sum(r['rows'] for r in per_month)} rows over {len(per_month)} month(s)")
        return dg.MaterializeResult(
            metadata={
                "model": lineage["model"],
                "model_dir": ref_of(root.storage, model_dir),
                "input_delta_version": version,
            }
        )

    return [_features, _labels, _split, *model_assets, _champion, _predictions]


def _model_asset(spec, params, name, k_split, t_features, t_labels, t_split, models_root, prefix) -> dg.AssetsDefinition:
    """One trained model of the pipeline (a separate function: each call builds exactly one asset)."""
    cfg = params.models[name]
    kinds = {"pytorch"} if cfg.type == "torch_mlp" else {"sklearn"}

    @dg.asset(
        key=key("ml", f"{prefix}_{name}"),
        deps=[k_split],
        group_name="ml",
        tags={"zone": "ml", "pipeline": spec.name},
        code_version=spec_version(spec),
        description=f"`{cfg.type}` model `{name}` trained on the training rows, scored on the validation rows"
        + (f" with {params.cv.folds}-fold {params.cv.kind} CV on the training rows (the same folds for every model)." if cfg.cv else ".")
        + " Versioned folder under the lake with model, lineage, metrics and plots.",
        kinds=kinds,
    )
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        split, split_lineage, split_version = fp.read_table(root, t_split)
        feat_version = split_lineage["inputs"][f"ml/{t_features}"]["delta_version"]
        lab_version = split_lineage["inputs"][f"ml/{t_labels}"]["delta_version"]
        feats, feat_lineage, _ = fp.read_table(root, t_features, feat_version)
        labels, lab_lineage, _ = fp.read_table(root, t_labels, lab_version)
        data = fp.dataset(feats, labels, split, params)
        with single_threaded():
            run = fp.fit_model(cfg, data, params)
        versions_ = {
            spec.input: split_lineage["inputs"][spec.input],
            f"ml/{t_features}": {"delta_version": feat_version},
            f"ml/{t_labels}": {"delta_version": lab_version},
            f"ml/{t_split}": {"delta_version": split_version},
        }
        hashes = {"features": feat_lineage.get("hash"), "labels": lab_lineage.get("hash"), "split": split_lineage.get("hash")}
        lineage = fp.model_lineage(cfg, params, spec.name, spec.input, versions_, hashes, run)
        lineage["split"] = split_lineage.get("cut", {})
        lineage["run_id"] = context.run_id
        plot_files: dict[str, str] = {}

        def extra(folder: Path) -> None:
            (folder / "metrics.json").write_text(json.dumps(run.metrics, indent=1))
            run.per_month.to_csv(folder / "per_month.csv", index=False)
            t = params.columns.time
            run.validation.assign(**{t: run.validation[t].astype(str)}).to_csv(folder / "validation_predictions.csv", index=False)
            with single_threaded():
                paths, importance = fp.write_plots(run, cfg, data, folder / "plots", params.seed)
            importance.rename("rmse_increase").to_csv(folder / "feature_importance.csv")
            plot_files.update({k: p.name for k, p in paths.items()})

        folder = save_model(root.storage, models_root(root, name), run.model, lineage, extra)
        plots = {k: f"{folder}/plots/{f}" for k, f in plot_files.items()}
        context.log.info(f"ml/{prefix}_{name}: {run.metrics} -> {folder}")
        return dg.MaterializeResult(
            metadata={
                **{k: _num(v) for k, v in run.metrics.items()},
                "per_month": _table(run.per_month, 3),
                **({"cv": _table(pd.DataFrame(run.cv), 3)} if run.cv else {}),
                "plots": _md_images(root, plots),
                **{f"plot_{k}": dg.MetadataValue.path(p) for k, p in plots.items()},
                "model_dir": ref_of(root.storage, folder),
                "model_version": version_name(folder),
                "lineage": dg.MetadataValue.json(json.loads(json.dumps({k: v for k, v in lineage.items() if k != "cv_folds"}, default=str))),
            }
        )

    return _model


def _rescore(root: Lake, current: dict, candidate_dir: str, t_features: str, t_labels: str, t_split: str, context) -> float | None:
    """The current champion's RMSE on the candidate's validation rows (its recorded RMSE if it cannot score them)."""
    try:
        model, lineage = load_model(root.storage, current["model_dir"])
        cand = read_json(root.storage, candidate_dir)
        v = cand["inputs"]
        feats, _, _ = fp.read_table(root, t_features, v[f"ml/{t_features}"]["delta_version"])
        labels, _, _ = fp.read_table(root, t_labels, v[f"ml/{t_labels}"]["delta_version"])
        split, _, _ = fp.read_table(root, t_split, v[f"ml/{t_split}"]["delta_version"])
        data = fp.dataset(feats, labels, split, fp.ForecastParams.of(lineage["params"]))
        cols = fp.ModelConfig.of(lineage["model"], lineage["params"]["models"][lineage["model"]]).columns
        with single_threaded():
            return evaluate.regression_metrics(data.y_valid, model.predict(data.valid[cols]))["rmse"]
    except Exception as exc:  # noqa: BLE001 - a champion that cannot score today's rows keeps its record
        context.log.warning(f"current champion could not be re-scored ({type(exc).__name__}: {exc}); using its recorded RMSE")
        return float(current["rmse"])


def _drift_gate(root: Lake, drift_table: str | None, model_dir: str, cfg: dict) -> tuple[bool, dict]:
    """Severe drift in the champion's validation months (or the newest month) blocks the promotion."""
    if not drift_table:
        return True, {"drift": "no drift table configured"}
    zone, table = drift_table.split("/")
    if root.version(zone, table) is None:
        return False, {"drift": f"{drift_table} has not been computed"}
    df = root.read_arrow(zone, table).to_pandas()
    lineage = read_json(root.storage, model_dir)
    months = set(lineage.get("split", {}).get("validation_months", []))
    if len(df):
        months.add(max(df["month"]))
    features = cfg.get("drift_features")
    sel = df[df["month"].isin(months)]
    if features:
        sel = sel[sel["feature"].isin(features)]
    severe = sel[sel["level"] == "severe"]
    return severe.empty, {
        "months_checked": dg.MetadataValue.json(sorted(months)),
        "severe": dg.MetadataValue.json(json.loads(severe[["month", "feature", "psi"]].to_json(orient="records"))),
        "max_psi": float(sel["psi"].max()) if len(sel) and sel["psi"].notna().any() else 0.0,
    }


# ====================================================================================================
# meter_anomaly
# ====================================================================================================
def build_meter_anomaly(project: Project, spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    """Drift of key features month to month, an unsupervised detector of faulty meter-days, and its
    monthly table of flagged meter-days."""
    cfg = anomaly.AnomalyConfig.of(spec.params.get("detector"), spec.params.get("columns"))
    dcfg = drift.DriftConfig.of(spec.params.get("drift"))
    prefix = spec.params.get("prefix", spec.name)
    seed = int(spec.params.get("seed", 0))
    zone, table = spec.input.split("/")
    source_key = key(zone, table)
    k_drift, k_model, k_flags = key("ml", f"{prefix}_drift"), key("ml", f"{prefix}_model"), key("ml", f"{prefix}_flags")
    all_months = {"daily": dg.AssetIn(key=source_key, partition_mapping=dg.AllPartitionMapping(), dagster_type=dg.Nothing)}
    common = {"group_name": "ml", "tags": {"zone": "ml", "pipeline": spec.name}, "code_version": spec_version(spec)}
    models_root = lambda lake: lake.uri("ml", f"{prefix}_model", "models")  # noqa: E731
    drift_check = "drift_psi"

    @dg.asset(
        key=k_drift,
        ins=all_months,
        description="Month-to-month drift of key features (PSI and KS against the same month a year before, "
        f"else the previous month): warn from PSI {dcfg.warn_psi}, severe from {dcfg.severe_psi}. Severe drift "
        "gates the forecasting champion.",
        kinds={"pandas", "delta"},
        check_specs=[dg.AssetCheckSpec(drift_check, asset=k_drift, description="The newest month did not drift from its "
                                       "reference month (warns, does not block; severe drift gates the champion).")],
        **common,
    )
    def _drift(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        daily, version = fp.read_input(root, spec.input)
        table_ = drift.monthly_drift(anomaly.drift_frame(daily, cfg, dcfg.ratios), dcfg)
        lineage = {"inputs": fp.input_lineage(spec.input, version, sorted(daily["month"].unique())), "code_version": code_version(),
                   "params": spec.params.get("drift", {})}
        out_version = fp.write_table(root, f"{prefix}_drift", table_, lineage)
        newest = table_["month"].max() if len(table_) else None
        flagged = table_[(table_["month"] == newest) & table_["level"].isin(["warn", "severe"])]
        return dg.MaterializeResult(
            metadata={
                "months": int(table_["month"].nunique()),
                "warn": int((table_["level"] == "warn").sum()),
                "severe": int((table_["level"] == "severe").sum()),
                "delta_version": out_version,
                "input_delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=drift_check,
                    passed=flagged.empty,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "month": newest or "none",
                        "drifted": _table(flagged, 3),
                        "psi_by_month": _table(table_.pivot(index="month", columns="feature", values="psi").reset_index(), 3)
                        if len(table_) else "none",
                    },
                )
            ],
        )

    @dg.asset(
        key=k_model,
        ins=all_months,
        description=f"Unsupervised detector of faulty meter-days ({cfg.method}) over the day-profile figures of "
        f"every month of {spec.input}; versioned under the lake with its lineage.",
        kinds={"sklearn"},
        **common,
    )
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        daily, version = fp.read_input(root, spec.input)
        feats = anomaly.day_features(daily, cfg)
        with single_threaded():
            detector = anomaly.fit(feats, cfg, seed)
            scores = anomaly.score(detector, feats)
        lineage = {
            "pipeline": spec.name,
            "inputs": fp.input_lineage(spec.input, version, sorted(daily["month"].unique())),
            "code_version": code_version(),
            "params": spec.params,
            "seed": seed,
            "threshold": detector.threshold_,
            "flagged_share": float(scores["flagged"].mean()),
        }
        folder = save_model(root.storage, models_root(root), detector, lineage)
        return dg.MaterializeResult(
            metadata={
                "meter_days": len(feats),
                "flagged": int(scores["flagged"].sum()),
                "threshold": float(detector.threshold_),
                "model_dir": ref_of(root.storage, folder),
                "input_delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
            }
        )

    @dg.asset(
        key=k_flags,
        deps=[k_model],
        ins={
            "daily": dg.AssetIn(
                key=source_key,
                partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=0, allow_nonexistent_upstream_partitions=True),
                dagster_type=dg.Nothing,
            )
        },
        partitions_def=monthly(project),
        backfill_policy=dg.BackfillPolicy.single_run(),
        description="Days of the month scored by the latest anomaly detector: every day with its score, "
        "`flagged` where the score passes the detector's threshold.",
        kinds={"sklearn", "delta"},
        **common,
    )
    def _flags(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        found = versions(root.storage, models_root(root))
        if not found:
            raise dg.Failure("no anomaly detector trained yet: materialize the model first")
        detector, lineage = load_model(root.storage, found[-1])
        run_cfg = anomaly.AnomalyConfig.of(lineage["params"].get("detector"), lineage["params"].get("columns"))
        months = months_of(context)
        first = (pd.Period(months[0], freq="M") - 1).strftime("%Y-%m")
        version = root.version(zone, table)
        window = [m for m in root.months(zone, table) if first <= m <= months[-1]]
        daily = root.read_arrow(zone, table, months=window, version=version).to_pandas()
        feats = anomaly.day_features(daily, run_cfg)
        with single_threaded():
            scored = anomaly.score(detector, feats)
        rows = []
        for month in months:
            out = scored[scored["month"] == month]
            if out.empty:
                continue
            out = out.assign(model_version=version_name(found[-1]))
            v = root.overwrite_month("ml", f"{prefix}_flags", pa.Table.from_pandas(out, preserve_index=False), month)
            rows.append({"month": month, "meter_days": len(out), "flagged": int(out["flagged"].sum()), "delta_version": v})
            context.add_asset_metadata(
                {"meter_days": len(out), "dagster/row_count": len(out), "flagged": int(out["flagged"].sum()), "delta_version": v},
                partition_key=month,
            )
        context.log.info(f"ml/{prefix}_flags: {sum(r['flagged'] for r in rows)} flagged meter-days over {len(rows)} month(s)")
        return dg.MaterializeResult(metadata={"model_version": version_name(found[-1]), "input_delta_version": version})

    return [_drift, _model, _flags]


# ====================================================================================================
# consumption_regression (the walking skeleton's single model, kept: other tests and benchmarks use it)
# ====================================================================================================
def build_consumption_model(project: Project, spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    zone, table = spec.input.split("/")
    validation_months = int(spec.params.get("validation_months", 3))
    model_params = dict(spec.params.get("model", {}))
    seed = int(spec.params.get("seed", 0))
    asset_key = key("ml", spec.name)
    baseline_check = "beats_yesterday"
    cols = forecast.Columns.of(spec.params.get("columns"))

    @dg.asset(
        key=asset_key,
        ins={"daily": dg.AssetIn(key=key(zone, table), partition_mapping=dg.AllPartitionMapping(), dagster_type=dg.Nothing)},
        group_name="ml",
        description=escape_md(spec.description) or f"Regressor trained on every month of {spec.input}.",
        kinds={"sklearn", "python"},
        tags={"zone": "ml"},
        code_version=spec_version(spec),
        check_specs=[
            dg.AssetCheckSpec(
                baseline_check,
                asset=asset_key,
                description="The model's validation RMSE is below that of the naive forecast 'same as yesterday' "
                "(lag_1) on the same validation days; a model that does not beat it warns.",
            )
        ],
    )
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        version = root.version(zone, table)
        daily = root.read_arrow(zone, table, version=version).to_pandas()
        features = consumption.daily_features(daily, cols)
        train, valid = consumption.time_split(features, validation_months)
        trained = consumption.train_regressor(train, valid, model_params, cols.target, seed=seed)
        lineage = {
            "inputs": {spec.input: {"delta_version": version, "months": sorted(daily["month"].unique().tolist())}},
            "code_version": code_version(),
            "run_id": context.run_id,
            "params": spec.params,
            "metrics": trained.metrics,
        }
        y_valid = valid[cols.target].to_numpy()
        pred_valid = trained.model.predict(valid[consumption.FEATURES])
        residuals = pd.concat([
            pd.DataFrame({"month": part["month"].to_numpy(), "split": name,
                          "residual": trained.model.predict(part[consumption.FEATURES]) - part[cols.target].to_numpy()})
            for name, part in (("train", train), ("validation", valid))
        ])

        def plots(folder: Path) -> None:
            (folder / "plots").mkdir()
            evaluate.plot_predicted_vs_actual(y_valid, pred_valid, folder / "plots" / "predicted_vs_actual.png", f"{spec.name}: validation days")
            evaluate.plot_residuals_by_month(residuals, folder / "plots" / "residuals_by_month.png", f"{spec.name}: residuals")

        folder = save_model(root.storage, root.uri("ml", spec.name, "models"), trained.model, lineage, plots)
        images = {name: f"{folder}/plots/{name}.png" for name in ("predicted_vs_actual", "residuals_by_month")}
        baseline_rmse = float(np.sqrt(np.mean((valid["lag_1"].to_numpy() - y_valid) ** 2)))
        context.log.info(f"ml/{spec.name}: {trained.metrics} (yesterday's value: rmse {baseline_rmse:.3f}) -> {folder}")
        beats = trained.metrics["rmse"] < baseline_rmse
        return dg.MaterializeResult(
            metadata={
                **{k: float(v) if isinstance(v, float) else v for k, v in trained.metrics.items()},
                "baseline_rmse": baseline_rmse,
                "plots": _md_images(root, images),
                **{f"plot_{name}": dg.MetadataValue.path(path) for name, path in images.items()},
                "model_dir": ref_of(root.storage, folder),
                "model_version": version_name(folder),
                "input_delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=baseline_check,
                    passed=beats,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=f"validation RMSE {trained.metrics['rmse']:.3f} vs {baseline_rmse:.3f} for yesterday's value",
                    metadata={"rmse": trained.metrics["rmse"], "baseline_rmse": baseline_rmse},
                )
            ],
        )

    return [_model]


BUILDERS: dict[str, Callable[[Project, PipelineSpec], list[dg.AssetsDefinition]]] = {
    "consumption_regression": build_consumption_model,
    "consumption_forecast": build_consumption_forecast,
    "meter_anomaly": build_meter_anomaly,
}


def build_pipeline_assets(project: Project, spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    try:
        builder = BUILDERS[spec.kind]
    except KeyError:
        raise ValueError(f"ml pipeline {spec.name!r}: unknown kind {spec.kind!r}; known: {sorted(BUILDERS)}") from None
    return builder(project, spec)
