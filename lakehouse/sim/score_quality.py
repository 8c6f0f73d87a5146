"""Score the trusted zone's fault detection against the simulator's ground truth.

``python -m lakehouse.sim.score_quality --world .demo --lake .lakehouse``

The meter simulator records every reading it corrupted in ``<world>/truth/faults.csv`` (device, timestamp,
kind, file). The lakehouse records what it caught in ``quality/quarantine`` (rejected and merged rows, with
their original key) and ``quality/repairs`` (changed cells, imputed rows). This script matches the two on
(meter, hour) per fault kind and prints precision and recall, for the months the trusted zone has
processed (their current batches). Which rule catches which kind is the mapping below (the rule names of
``lakehouse/defs/sources/meter_readings/defs.yaml``); ``--rule kind=name[,name]`` overrides it.

Matching, per kind:

* a *detection* is a (meter, timestamp) that one of the kind's rules quarantined, merged or repaired;
  for ``clock_shift`` the timestamp is the one the row arrived with (the repair's old value); for
  ``missing``, an imputed hour whose slot no rejected row held (holes the cleaning itself made by
  quarantining a reading are not claims that the hour was missing);
* precision = detections that are true faults of that kind / detections;
* recall = true faults of that kind that were detected / true faults of that kind;
* true faults on rows that never arrived (a spike on an hour that is also ``missing``) are left out of
  that kind's count (``undelivered``); ``recall (any rule)`` counts a fault as caught when any rule
  quarantined, merged or repaired its row (a conflict between two negative readings is quarantined as
  negative, not merged as a conflict);
* ``other faults``: detections on rows the truth lists under another kind only (e.g. a stuck meter
  repeating a negative value: the rows are negative, the truth calls them stuck), and ``false alarms``:
  detections on rows with no fault at all. ``precision excl. overlaps`` leaves the former out of the
  denominator; the plain precision counts them against the rule.

Rows are matched on their hour (the key after ``align_to_hour``): the truth records an overlapping fault at
the shifted time of a clock shift (``17:30`` for the 17:00 reading), and a quarantined row keeps the time it
arrived with. Clock shifts themselves are matched on that arrival time exactly.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from lakehouse.io.lake import Lake
from lakehouse.quality import metrics, quarantine, repairs

DATASET = "meter_readings"
#: fault kind -> (table, rules that claim it)
CLAIMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "negative": ("quarantine", ("non_negative_reading",)),
    "spike": ("both", ("outlier_reading",)),
    "wh_unit": ("repairs", ("wh_to_kwh",)),
    "duplicate": ("quarantine", ("exact_duplicate",)),
    "conflict": ("quarantine", ("conflicting_readings",)),
    "stuck": ("both", ("stuck_meter",)),
    "missing": ("imputed", ("fill_short_gaps",)),
    "clock_shift": ("shifted", ("align_to_hour",)),
}
TARGET_PRECISION = 0.99
TARGET_RECALL = 0.95


@dataclass
class KindScore:
    kind: str
    rules: list[str]
    truth: int
    detected: int
    true_positives: int
    other_faults: int = 0
    false_alarms: int = 0
    #: true faults of this kind on rows that never arrived (also ``missing``): left out of ``truth``
    undelivered: int = 0
    #: true faults of this kind that some rule caught (quarantined, merged or repaired the row)
    caught_by_any: int = 0

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.detected if self.detected else None

    @property
    def precision_excl_overlaps(self) -> float | None:
        n = self.detected - self.other_faults
        return self.true_positives / n if n else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.truth if self.truth else None

    @property
    def recall_any_rule(self) -> float | None:
        return self.caught_by_any / self.truth if self.truth else None

    @property
    def meets_targets(self) -> bool:
        return (self.precision or 0) >= TARGET_PRECISION and (self.recall or 0) >= TARGET_RECALL


def _ts(values: pd.Series, hour: bool = True) -> pd.Series:
    """ISO text of each timestamp; ``hour``: of the hour it falls in (its slot)."""
    ts = pd.to_datetime(values, utc=True, format="ISO8601")
    return (ts.dt.floor("h") if hour else ts).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _keys(frame: pd.DataFrame, key_col: str = "key") -> pd.DataFrame:
    """(meter, ts) from the JSON key column."""
    if frame.empty:
        return pd.DataFrame(columns=["meter", "ts"])
    parsed = frame[key_col].map(json.loads)
    return pd.DataFrame({"meter": parsed.map(lambda k: k.get("meter_id")), "ts": _ts(parsed.map(lambda k: k.get("ts")))})


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["meter"], frame["ts"], strict=True))


def load_truth(world: Path, months: set[str]) -> pd.DataFrame:
    path = world / "truth" / "faults.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ground truth (build the world with `python -m lakehouse.sim build`)")
    truth = pd.read_csv(path, dtype=str)
    truth["month"] = truth["file"].map(lambda f: (re.search(r"_(\d{4}-\d{2})\.csv$", f) or [None, None])[1])
    truth = truth[truth["month"].isin(months)]
    exact = truth["kind"] == "clock_shift"
    ts = _ts(truth["ts"]).where(~exact, _ts(truth["ts"], hour=False))
    return pd.DataFrame({"meter": truth["device_id"], "ts": ts, "kind": truth["kind"]})


def score(world: Path, lake: Lake, claims: dict[str, tuple[str, tuple[str, ...]]] = CLAIMS) -> tuple[list[KindScore], list[str]]:
    """Per-kind scores and the months scored."""
    batches = metrics.current_batches(lake).to_pandas()
    months = sorted(batches[(batches["dataset"] == DATASET) & (batches["stage"] == "trusted")]["month"])
    if not months:
        raise LookupError(f"{lake.root}: trusted/{DATASET} has no processed month (materialize it first)")
    truth = load_truth(world, set(months))
    q = quarantine.current(lake, dataset=DATASET, stage="trusted", months=months).to_pandas()
    r = repairs.current(lake, dataset=DATASET, months=months).to_pandas()
    q_rules = q["rule"].fillna("").str.split(",") if not q.empty else pd.Series([], dtype=object)
    rejected_slots = _pairs(_keys(q[q["disposition"] == quarantine.REJECTED])) if not q.empty else set()
    faulty = _pairs(truth) | set(zip(truth["meter"], _ts(truth["ts"]), strict=True))
    undelivered = _pairs(truth[truth["kind"] == "missing"])
    caught = (_pairs(_keys(q)) if not q.empty else set()) | (_pairs(_keys(r[r["old_value"].notna()])) if not r.empty else set())
    scores = []
    for kind, (where, rules) in claims.items():
        found: set[tuple[str, str]] = set()
        if where in ("quarantine", "both") and not q.empty:
            found |= _pairs(_keys(q[q_rules.map(lambda names, rs=rules: any(n in rs for n in names))]))
        if where in ("repairs", "both") and not r.empty:
            found |= _pairs(_keys(r[r["rule"].isin(rules)]))
        if where == "imputed" and not r.empty:
            imputed = r[r["rule"].isin(rules) & r["old_value"].isna()]
            found |= _pairs(_keys(imputed)) - rejected_slots
        if where == "shifted" and not r.empty:
            moved = r[r["rule"].isin(rules) & (r["column"] == "ts")]
            if not moved.empty:
                keys = _keys(moved)
                found |= set(zip(keys["meter"], _ts(moved["old_value"], hour=False), strict=True))
        expected = _pairs(truth[truth["kind"] == kind])
        gone = expected & undelivered if kind != "missing" else set()
        expected -= gone
        other = (found - expected) & faulty
        scores.append(
            KindScore(
                kind,
                list(rules),
                len(expected),
                len(found),
                len(found & expected),
                len(other),
                len(found - expected - other),
                len(gone),
                len(expected & (caught | found)),
            )
        )
    return scores, months


def report(scores: list[KindScore], months: list[str]) -> str:
    lines = [
        f"Fault detection vs ground truth, {DATASET}, {len(months)} months ({months[0]}..{months[-1]})",
        "",
        "| fault kind | caught by | true faults | undelivered | detections | true positives | other faults | false alarms "
        "| precision | precision excl. overlaps | recall | recall (any rule) | targets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    for s in scores:
        ok = "n/a (none injected)" if not s.truth else ("met" if s.meets_targets else "**missed**")
        lines.append(
            f"| {s.kind} | {', '.join(f'`{x}`' for x in s.rules)} | {s.truth} | {s.undelivered} | {s.detected} "
            f"| {s.true_positives} | {s.other_faults} | {s.false_alarms} | {fmt(s.precision)} "
            f"| {fmt(s.precision_excl_overlaps)} | {fmt(s.recall)} | {fmt(s.recall_any_rule)} | {ok} |"
        )
    lines.append("")
    lines.append(f"Targets: precision >= {TARGET_PRECISION}, recall >= {TARGET_RECALL} per kind.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.sim.score_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=Path(".demo"))
    parser.add_argument("--lake", type=Path, default=Path(".lakehouse"))
    parser.add_argument("--rule", action="append", default=[], help="kind=rule[,rule]: override which rules claim a kind")
    parser.add_argument("--json", type=Path, help="also write the scores as JSON here")
    args = parser.parse_args(argv)
    claims = dict(CLAIMS)
    for item in args.rule:
        kind, _, names = item.partition("=")
        if kind not in claims or not names:
            parser.error(f"--rule {item!r}: expected kind=rule[,rule] with kind in {sorted(claims)}")
        claims[kind] = (claims[kind][0], tuple(names.split(",")))
    scores, months = score(args.world, Lake(args.lake), claims)
    print(report(scores, months))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "months": months,
                    "scores": [
                        {
                            **asdict(s),
                            "precision": s.precision,
                            "precision_excl_overlaps": s.precision_excl_overlaps,
                            "recall": s.recall,
                            "recall_any_rule": s.recall_any_rule,
                        }
                        for s in scores
                    ],
                },
                indent=1,
            )
        )
    missed = [s.kind for s in scores if s.truth and not s.meets_targets]
    if missed:
        print(f"\nbelow target: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
