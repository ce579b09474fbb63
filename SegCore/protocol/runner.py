"""Run a study's protocol stage by stage into one folder, resumably; say where it stands.

RUN/protocol.json: {"format", "study", "data", "tiny", "overrides", "stages"}: what was asked and the study's
stages as they were, written at the first start. Running again needs the same study, data, --tiny and --set
(a different request is refused, naming the difference); --fold and --device may differ.
RUN/status.json: {"state", "current", "message", "pid", "updated"}, rewritten atomically at every stage;
`read_status` adds each stage's state from the stage's own files (what `segcore run --status` prints).
Stage states: 'pending', 'running', 'finished', 'stopped', 'failed'; a train stage's detail comes from its own
status.json (epoch, loss, Dice).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from SegCore.atomic import atomic_file, process_alive
from SegCore.errors import SegCoreError
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress
from SegCore.protocol import stages as stage_tools
from SegCore.protocol.testing import is_done, run_test_stage
from SegCore.studies.schema import Stage

FORMAT = "segstudies-protocol"
PROTOCOL_FILE, STATUS_FILE = "protocol.json", "status.json"
ASKED = ("study", "data", "tiny", "overrides", "stages")  # must match to resume


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise SegCoreError(f"cannot read {path.name}: {error}", path=path,
                           fix="remove the file (or the run folder) and start again") from None


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")


def _train_state(folder: Path) -> dict:
    status = _read_json(folder / "status.json") if (folder / "status.json").is_file() else None
    if status is None:
        return {"state": "pending"}
    keep = ("state", "epoch", "epochs", "loss", "last_metric", "best_metric", "message")
    state = {key: status[key] for key in keep if key in status}
    if state.get("state") not in ("finished", "stopped", "failed"):
        state["state"] = "stopped"  # a run whose process is gone (killed) while its status said it trained
    return state


def stage_state(stage, run: Path) -> dict:
    """The state of one stage from its own files (a train run's status.json, a test's test.json)."""
    folder = run / stage.name
    if stage.kind == "train":
        state = _train_state(folder)
        if state["state"] == "finished" and not (folder / "best.pt").is_file():
            state["state"] = "stopped"
        return state
    if is_done(stage, run):
        summary = _read_json(folder / "test.json") or {}
        return {"state": "finished", "dice_mean": summary.get("dice_mean")}
    return {"state": "stopped" if folder.exists() else "pending"}


def read_status(run: str | Path) -> dict:
    """The protocol's status, computed from the stage folders (SegCoreError when RUN holds no protocol)."""
    run = Path(run)
    asked = _read_json(run / PROTOCOL_FILE)
    if asked is None or asked.get("format") != FORMAT:
        raise SegCoreError("this folder holds no protocol run (no protocol.json)", path=run,
                           fix="start one with segcore run --study S --data DIR --out RUN")
    rows = [{"name": s.name, "kind": s.kind, "fold": s.fold, **stage_state(s, run)} for s in recorded_stages(asked)]
    saved = _read_json(run / STATUS_FILE) or {}
    left = [row["name"] for row in rows if row["state"] != "finished"]
    state = "finished" if not left else ("failed" if saved.get("state") == "failed" else "stopped")
    if saved.get("state") == "running" and left:
        state = "running" if process_alive(saved.get("pid")) else "stopped"
    return {"study": asked["study"], "data": asked["data"], "state": state, "next": left[0] if left else None,
            "message": saved.get("message", ""), "stages": rows}


def recorded_stages(asked: dict) -> list[Stage]:
    """The stages protocol.json recorded (the study file may have changed since)."""
    return [Stage(s["name"], s["kind"], s.get("plan") or {}, tuple(s.get("models") or ()), s.get("fold"),
                  s.get("loss_target")) for s in asked["stages"]]


def format_status(status: dict) -> str:
    """Lines for people: one per stage, then what runs next."""
    lines = [f"{status['study']} protocol on {status['data']}: {status['state']}"]
    for row in status["stages"]:
        detail = ""
        if row["kind"] == "train" and row.get("epoch") is not None:
            detail = f"epoch {row['epoch']}/{row.get('epochs', '?')}"
            if row.get("loss") is not None:
                detail += f", loss {row['loss']:.4f}"
        if row.get("dice_mean"):
            detail = "; ".join(f"{ref} {key} Dice {value:.3f}" for ref, values in row["dice_mean"].items()
                               for key, value in values.items() if value is not None)
        lines.append(f"  {row['name']:<24} {row['kind']:<5} {row['state']:<9} {detail}".rstrip())
    if status["next"]:
        lines.append(f"next: {status['next']} (run the same segcore run command to continue)")
    return "\n".join(lines)


def _write_status(run: Path, state: str, current: str | None, message: str = "") -> None:
    import os

    _write_json(run / STATUS_FILE, {"state": state, "current": current, "message": message, "pid": os.getpid(),
                                    "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _start(run: Path, asked: dict) -> None:
    """Create RUN/protocol.json, or check that a previous start asked the same."""
    from SegCore.atomic import check_output

    check_output(run)
    previous = _read_json(run / PROTOCOL_FILE)
    if previous is None:
        if run.exists() and any(run.iterdir()):
            raise SegCoreError("the output folder is not empty and holds no protocol run", path=run,
                               fix="choose a new --out folder (or empty this one)")
        _write_json(run / PROTOCOL_FILE, {"format": FORMAT, **asked})  # creates RUN (and records it)
        return
    if previous.get("stages") != asked["stages"] and all(previous.get(k) == asked.get(k) for k in ASKED[:-1]):
        raise SegCoreError(f"the {asked['study']} study's protocol changed since this run started", path=run,
                           fix="finish it with the SegStudies version that started it, or give a new --out")
    for key in ASKED[:-1]:
        if previous.get(key) != asked.get(key):
            raise SegCoreError(f"this run was started with {key} {json.dumps(previous.get(key))}, not "
                               f"{json.dumps(asked.get(key))}", path=run / PROTOCOL_FILE,
                               fix="repeat the first command to resume it, or give a new --out")


def run_protocol(study: str, data: str | Path, out: str | Path, *, tiny: bool = False, fold: int | None = None,
                 overrides=(), device: str | None = None, progress: ProgressCallback = no_progress) -> dict:
    """Run (or resume) every stage of `study`'s protocol (of `fold` only, when given) into `out`, then the
    report. Returns {"status", "report"}; SegCoreError for bad arguments before anything is written."""
    from SegCore.protocol.report import write_report
    from SegCore.studies import get_study
    from SegCore.training.run_folder import RunFolder
    from SegCore.training.trainer import train_from_plan

    spec = get_study(study)
    stage_tools.check_protocol(spec)
    chosen = stage_tools.select_stages(spec.protocol, fold)
    run, data = Path(out), Path(data).absolute()
    if not data.is_dir():
        raise SegCoreError("the data folder does not exist", path=data, fix="give --data the dataset's folder")
    asked = {"study": spec.name, "data": str(data), "tiny": bool(tiny), "overrides": list(overrides),
             "stages": json.loads(json.dumps([dataclasses.asdict(s) for s in spec.protocol]))}
    # Every train plan is resolved before anything runs: a bad --set fails now, not hours into the protocol.
    stage_tools.check_scopes(chosen, list(overrides))
    plans = {s.name: stage_tools.train_plan(spec, s, data=data, out=run, tiny=tiny, overrides=list(overrides),
                                            device=device) for s in chosen if s.kind == "train"}
    _start(run, asked)
    current = None
    try:
        for index, stage in enumerate(chosen):
            current = stage.name
            state = stage_state(stage, run)["state"]
            progress(ProgressEvent("protocol", index, len(chosen), f"{stage.name}: {state}"))
            if state == "finished":
                continue
            _write_status(run, "running", stage.name)
            folder = run / stage.name
            if stage.kind == "train":
                resume = (folder / "last.pt").is_file() and (folder / "plan.json").is_file()
                plan = RunFolder(folder).read_plan() if resume else plans[stage.name]
                if resume and device:
                    plan["device"] = device
                result = train_from_plan(plan, folder, resume=resume, overwrite=not resume and folder.exists(),
                                         progress=progress, resume_command=_command(spec.name, data, run))
                print(f"{stage.name}: {result['summary']}")
                loss = final_loss(folder)
                if stage.loss_target is not None and loss is not None and loss > stage.loss_target:
                    print(f"{stage.name}: the last epoch's average loss {loss:.3g} is above the {stage.loss_target:g} "
                          f"the study asks for before the next stage: train longer (--set training.epochs=N)")
            else:
                result = run_test_stage(stage, run=run, device=device or "auto", progress=progress)
                print(f"{stage.name}: tested {len(result['cases'])} held-out case(s)")
        progress(ProgressEvent("protocol", len(chosen), len(chosen), "report"))
        report = write_report(run)
    except BaseException as error:
        from SegCore.failures import describe

        stopped = isinstance(error, KeyboardInterrupt)
        _write_status(run, "stopped" if stopped else "failed", current,
                      "" if stopped else describe(error).message)
        raise
    _write_status(run, "finished" if fold is None else "stopped", None,
                  "" if fold is None else f"fold {fold} done")
    return {"status": read_status(run), "report": [str(p) for p in report]}


def final_loss(folder: Path) -> float | None:
    """The last epoch's average training loss of a train stage (its history.csv), None before one ends."""
    import csv

    try:
        with open(folder / "history.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return None
    return float(rows[-1]["loss"]) if rows and rows[-1].get("loss") else None


def _command(study: str, data: Path, run: Path) -> str:
    import shlex

    return shlex.join(["segcore", "run", "--study", study, "--data", str(data), "--out", str(run)])
