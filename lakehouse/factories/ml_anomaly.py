"""The assets of a ``meter_anomaly`` pipeline: month-to-month drift (+ warning check), an unsupervised
detector of faulty entity-days, and its monthly table of flagged days. The computation is in
:mod:`lakehouse.ml.anomaly` and :mod:`lakehouse.ml.drift`."""

from dataclasses import dataclass

import dagster as dg
import pyarrow as pa

from lakehouse.factories.common import LakeResource, monthly, months_of
from lakehouse.factories.ml_common import PipelineAssets, frame_table
from lakehouse.io.lake import Lake
from lakehouse.ml import anomaly, drift
from lakehouse.ml import pipeline as fp
from lakehouse.ml.lineage import code_version
from lakehouse.ml.models import load_model, ref_of, save_model, version_name, versions
from lakehouse.ml.train import single_threaded
from lakehouse.specs.ml import AnomalyPipeline
from lakehouse.specs.models import Project

DRIFT_CHECK = "drift_psi"


@dataclass(frozen=True)
class _Anomaly(PipelineAssets):
    """The detector's versions are ``ml/<prefix>_model/models/vNNNN``."""

    cfg: anomaly.AnomalyConfig
    dcfg: drift.DriftConfig
    seed: int

    def models_folder(self, lake: Lake) -> str:
        return lake.uri("ml", f"{self.prefix}_model", "models")


def build_meter_anomaly(project: Project, spec: AnomalyPipeline) -> list[dg.AssetsDefinition]:
    """Drift of key features month to month, an unsupervised detector of faulty meter-days, and its
    monthly table of flagged meter-days."""
    a = _Anomaly(project, spec, spec.prefix, spec.params.detector, spec.params.drift, spec.params.seed)
    return [_drift_asset(a), _model_asset(a), _flags_asset(a)]


def _drift_asset(a: _Anomaly) -> dg.AssetsDefinition:
    k_drift, spec = a.key("drift"), a.spec

    @dg.asset(
        key=k_drift,
        ins=a.all_months,
        description="Month-to-month drift of key features (PSI and KS against the same month a year before, "
        f"else the previous month): warn from PSI {a.dcfg.warn_psi}, severe from {a.dcfg.severe_psi}. Severe drift "
        "gates the forecasting champion.",
        kinds={"pandas", "delta"},
        check_specs=[
            dg.AssetCheckSpec(
                DRIFT_CHECK,
                asset=k_drift,
                description="The newest month did not drift from its "
                "reference month (warns, does not block; severe drift gates the champion).",
            )
        ],
        **a.common,
    )
    def _drift(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        daily, version = fp.read_input(root, spec.input)
        table_ = drift.monthly_drift(anomaly.drift_frame(daily, a.cfg, a.dcfg.ratios), a.dcfg)
        lineage = {
            "inputs": fp.input_lineage(spec.input, version, sorted(daily["month"].unique())),
            "code_version": code_version(),
            "params": a.dcfg.model_dump(mode="json"),
        }
        out_version = fp.write_table(root, f"{a.prefix}_drift", table_, lineage)
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
                    check_name=DRIFT_CHECK,
                    passed=flagged.empty,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "month": newest or "none",
                        "drifted": frame_table(flagged, 3),
                        "psi_by_month": frame_table(table_.pivot(index="month", columns="feature", values="psi").reset_index(), 3)
                        if len(table_)
                        else "none",
                    },
                )
            ],
        )

    return _drift


def _model_asset(a: _Anomaly) -> dg.AssetsDefinition:
    spec = a.spec

    @dg.asset(
        key=a.key("model"),
        ins=a.all_months,
        description=f"Unsupervised detector of faulty meter-days ({a.cfg.method}) over the day-profile figures of "
        f"every month of {spec.input}; versioned under the lake with its lineage.",
        kinds={"sklearn"},
        **a.common,
    )
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        daily, version = fp.read_input(root, spec.input)
        feats = anomaly.day_features(daily, a.cfg)
        with single_threaded():
            detector = anomaly.fit(feats, a.cfg, a.seed)
            scores = anomaly.score(detector, feats)
        lineage = {
            "pipeline": spec.name,
            "inputs": fp.input_lineage(spec.input, version, sorted(daily["month"].unique())),
            "code_version": code_version(),
            "params": spec.params.model_dump(mode="json"),
            "seed": a.seed,
            "threshold": detector.threshold_,
            "flagged_share": float(scores["flagged"].mean()),
        }
        folder = save_model(root.storage, a.models_folder(root), detector, lineage)
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

    return _model


def _flags_asset(a: _Anomaly) -> dg.AssetsDefinition:
    @dg.asset(
        key=a.key("flags"),
        deps=[a.key("model")],
        ins=a.months_back(1),
        partitions_def=monthly(a.project),
        backfill_policy=dg.BackfillPolicy.single_run(),
        description="Days of the month scored by the latest anomaly detector: every day with its score, "
        "`flagged` where the score passes the detector's threshold.",
        kinds={"sklearn", "delta"},
        **a.common,
    )
    def _flags(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        found = versions(root.storage, a.models_folder(root))
        if not found:
            raise dg.Failure("no anomaly detector trained yet: materialize the model first")
        detector, lineage = load_model(root.storage, found[-1])
        model_version = version_name(found[-1])
        version, by_month = anomaly.score_months(root, a.spec.input, detector, lineage, model_version, months_of(context))
        flagged = 0
        for month, out in by_month:
            v = root.overwrite_month("ml", f"{a.prefix}_flags", pa.Table.from_pandas(out, preserve_index=False), month)
            flagged += int(out["flagged"].sum())
            context.add_asset_metadata(
                {"meter_days": len(out), "dagster/row_count": len(out), "flagged": int(out["flagged"].sum()), "delta_version": v},
                partition_key=month,
            )
        context.log.info(f"ml/{a.prefix}_flags: {flagged} flagged meter-days over {len(by_month)} month(s)")
        return dg.MaterializeResult(metadata={"model_version": model_version, "input_delta_version": version})

    return _flags
