"""The protocol's report: every test stage's Dice, per fold and over all held-out cases together.

RUN/report.json: {"study", "tests": [test.json of each finished test stage], "overall": {test: {reference:
{"<group>/<label>": {"mean", "std", "n", "per_fold"}}}}, "training": [{"stage", "loss", "target", "reached"}
for each trained stage with a loss target (the last epoch's average loss against the original's)]}. A test's
name drops its fold ("fold0-coarse" and "fold1-coarse" are the test "coarse"); "mean" pools the cases of every
fold (the pancreas study's average DSC over all cases), "per_fold" gives each fold's mean. RUN/report.md is the
same as tables for people.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from SegCore.atomic import atomic_file

FOLD_PREFIX = re.compile(r"^fold\d+-")


def _test_name(record: dict) -> str:
    return FOLD_PREFIX.sub("", record["stage"]) if record.get("fold") is not None else record["stage"]


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def collect(tests: list[dict]) -> dict:
    """The "overall" table of report.json from the test records."""
    pooled: dict = {}
    for record in tests:
        for reference, columns in record.get("dice_per_case", {}).items():
            for column, cases in columns.items():
                entry = pooled.setdefault(_test_name(record), {}).setdefault(reference, {}).setdefault(
                    column, {"values": [], "per_fold": {}})
                values = [float(v) for v in cases.values() if v is not None and not math.isnan(float(v))]
                entry["values"] += values
                if record.get("fold") is not None:
                    entry["per_fold"][str(record["fold"])] = _stats(values)[0]
    overall = {}
    for test, references in pooled.items():
        for reference, columns in references.items():
            for column, entry in columns.items():
                mean, std = _stats(entry["values"])
                overall.setdefault(test, {}).setdefault(reference, {})[column] = {
                    "mean": mean, "std": std, "n": len(entry["values"]), "per_fold": entry["per_fold"]}
    return overall


def training_losses(run: Path, stages: list[dict]) -> list[dict]:
    """Each trained stage with a loss target: its last epoch's average loss against the target."""
    from SegCore.protocol.runner import final_loss

    rows = []
    for stage in stages:
        loss = final_loss(run / stage["name"]) if stage.get("loss_target") is not None else None
        if loss is not None:
            rows.append({"stage": stage["name"], "loss": loss, "target": stage["loss_target"],
                         "reached": loss <= stage["loss_target"]})
    return rows


def _markdown(study: str, overall: dict, training: list[dict]) -> str:
    lines = [f"# {study}: protocol report", "", "Dice per test, over all held-out cases (mean ± std, n cases); "
             "per fold where cross-validated.", ""]
    if training:
        lines += ["## Training losses", "", "The last epoch's average training loss of each stage, against the loss "
                  "the study asks a stage to reach before the next.", "",
                  "| stage | loss | target | reached |", "|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['loss']:.4f} | {r['target']:g} | {'yes' if r['reached'] else 'no'} |"
                  for r in training] + [""]
    for test, references in overall.items():
        lines += [f"## {test}", "", "| reference | prediction / label | Dice | n | per fold |", "|---|---|---|---|---|"]
        for reference, columns in references.items():
            for column, entry in columns.items():
                value = "n/a" if entry["mean"] is None else f"{entry['mean']:.4f} ± {entry['std']:.4f}"
                folds = ", ".join(f"{k}: {v:.4f}" for k, v in entry["per_fold"].items() if v is not None)
                lines.append(f"| {reference} | {column} | {value} | {entry['n']} | {folds} |")
        lines.append("")
    return "\n".join(lines)


def write_report(run: Path) -> list[Path]:
    """Write RUN/report.json and RUN/report.md from the finished test stages; returns their paths."""
    asked = json.loads((run / "protocol.json").read_text(encoding="utf-8"))
    tests = []
    for stage in asked["stages"]:
        done = run / stage["name"] / "test.json"
        if done.is_file():
            tests.append(json.loads(done.read_text(encoding="utf-8")))
    overall = collect(tests)
    training = training_losses(run, asked["stages"])
    report = {"study": asked["study"], "data": asked["data"], "tests": tests, "overall": overall,
              "training": training}
    paths = [run / "report.json", run / "report.md"]
    with atomic_file(paths[0]) as tmp:
        tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    with atomic_file(paths[1]) as tmp:
        tmp.write_text(_markdown(asked["study"], overall, training), encoding="utf-8")
    return paths
