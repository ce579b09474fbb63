"""Batch prediction: find the cases of an input folder, predict them one after another, keep a record.

    cases, batch = find_cases([Path("scans/")])           # [InputCase("case01", (scans/case01.nii.gz,)), ...]
    record = predict_batch(predictor, cases, Path("pred/"), fmt="nii.gz", resume=True)
    record["cases"][0]    # {"case_id", "status": "done"|"failed"|"skipped", "seconds", "output", "files",
                          #  "error", "warnings", "model_id", "rank"}

While the network works on one case, a reader thread reads the next and a writer thread writes the previous
(queues of two), so disk and decompression time hide behind the network. A case that fails (a corrupt file, a
wrong number of channels, out of GPU memory) is recorded with its one-line error and the batch goes on. The
record (`predictions.json`, or `predictions.rank<R>.json` for rank R of a torchrun job, merged by rank 0 with
`merge_records`) is rewritten after every case, so `resume` also works after a crash or Ctrl-C.
"""

from __future__ import annotations

import contextvars
import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from SegCore.atomic import add_inputs, atomic_file, file_stem, resolved
from SegCore.errors import SegCoreError
from SegCore.inference.outputs import output_paths, write_prediction
from SegCore.progress import ProgressEvent, no_progress

RECORD_NAME = "predictions.json"
RECORD_FORMAT = "segstudies-predictions"
FINISHED = ("done", "skipped")
QUEUE_SIZE = 2  # cases held between the threads: enough to overlap, little memory


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its id (names the output) and its image paths (one file, a DICOM folder, or one
    file per channel, as `SegCore.inference.read_input` takes them)."""

    case_id: str
    paths: tuple[Path, ...]


def _image_files(folder: Path) -> list[Path]:
    from SegCore.datasets._common import IMAGE_SUFFIXES, visible

    return [p for p in visible(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.lower().endswith(".dcm")]


def _cases_from_files(files: list[Path]) -> list[InputCase]:
    """One case per file; nnU-Net channel files (case_0000, case_0001, ...) form one case."""
    from SegCore.datasets.generic import CHANNEL_SUFFIX

    stems = {file_stem(p) for p in files}
    grouped: dict[str, list[tuple[str, Path]]] = {}
    for path in files:
        match = CHANNEL_SUFFIX.match(file_stem(path))
        if match and match.group(1) not in stems:
            grouped.setdefault(match.group(1), []).append((match.group(2), path))
        else:
            grouped.setdefault(file_stem(path), []).append(("", path))
    return [InputCase(case_id, tuple(p for _, p in sorted(parts))) for case_id, parts in sorted(grouped.items())]


def find_cases(inputs: list[Path], *, exclude: Path | None = None) -> tuple[list[InputCase], bool]:
    """The cases `inputs` name, and whether they are a batch (one output per case in a folder).

    One case: a file, several files (one per channel), or a folder holding a DICOM series. A batch: a dataset
    folder SegCore.datasets opens (any layout, labels not needed), a folder of image files, or a folder of DICOM
    series folders. `exclude` (the output folder) is never taken for a case. Raises SegCoreError naming the
    folder when it holds nothing to predict.
    """
    from SegCore.datasets import detect_layout, open_dataset
    from SegCore.datasets._common import check_root, subfolders
    from SegCore.io import list_dicom_series

    inputs = [Path(p) for p in inputs]
    if len(inputs) > 1 or not inputs[0].is_dir():
        return [InputCase(file_stem(inputs[0]), tuple(inputs))], False
    folder = check_root(inputs[0])
    try:
        layout = detect_layout(folder)
    except SegCoreError:
        layout = None
    if layout is not None:
        options = {"require_labels": False} if layout in ("atrium", "pancreas", "muscle", "thalamus") else {}
        dataset = open_dataset(folder, layout, **options)
        return [InputCase(case.case_id, case.image_paths) for case in dataset.cases], True
    files = _image_files(folder)
    if files:
        return _cases_from_files(files), True
    if list_dicom_series(folder):
        return [InputCase(folder.name, (folder,))], False
    skip = resolved(exclude) if exclude is not None else None
    series = [f for f in subfolders(folder) if resolved(f) != skip]
    if not series:
        raise SegCoreError("the folder holds no image files, DICOM series or dataset to predict", path=folder,
                           fix="pass an image file, a DICOM series folder, or a folder of cases")
    return [InputCase(f.name, (f,)) for f in series], True


def write_record(path: Path, record: dict) -> Path:
    """Write a record (predictions.json layout) atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a damaged record only means that nothing is skipped
        return {}


def previous_entries(output: Path) -> dict[str, dict]:
    """case id -> entry of the records in `output`: predictions.json, then the rank files of a torchrun job
    that stopped before rank 0 merged them (they are newer)."""
    entries = {}
    for path in [output / RECORD_NAME, *sorted(output.glob("predictions.rank*.json"))]:
        for entry in _read_json(path).get("cases", []) if path.is_file() else []:
            if isinstance(entry, dict) and "case_id" in entry:
                entries[entry["case_id"]] = entry
    return entries


def _finished(entry: dict | None, paths: list[Path], model_id: str) -> bool:
    return (entry is not None and entry.get("status") in FINISHED and entry.get("model_id") == model_id
            and all(p.is_file() for p in paths))


def _entry(case: InputCase, status: str, model_id: str, rank: int, *, seconds: float = 0.0, output=None,
           files=(), error=None, warnings=()) -> dict:
    return {"case_id": case.case_id, "status": status, "seconds": round(seconds, 3),
            "output": None if output is None else str(output), "files": [str(p) for p in files], "error": error,
            "warnings": list(warnings), "model_id": model_id, "rank": rank}


def _one_line(error: BaseException) -> str:
    from SegCore.failures import describe

    return describe(error).message


def _put(channel: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` unless asked to stop meanwhile (a full queue never blocks an interrupted job)."""
    while not stop.is_set():
        try:
            channel.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(channel: queue.Queue, stop: threading.Event):
    while not stop.is_set():
        try:
            return channel.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def _thread(target, *args) -> threading.Thread:
    # Each thread runs in a copy of this context, so it works inside the command's guard_outputs scope (inputs
    # it reads are recorded, outputs it writes are checked); a thread started plainly would see no scope.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target, *args), daemon=True)
    thread.start()
    return thread


def predict_batch(predictor, cases: list[InputCase], output: Path, *, fmt: str | None = None,
                  probabilities: bool = False, uncertainty: bool = False, resample: bool = False,
                  resume: bool = False, settings: dict | None = None, progress=no_progress, rank: int = 0,
                  world_size: int = 1) -> dict:
    """Predict the cases `i % world_size == rank` into the folder `output`; returns this rank's record.

    predictor: a SegCore.inference.Predictor (its .predict, .model_id, .labels, .channels); fmt: the label
    format (outputs.FORMATS); resume: skip a case whose files exist and whose previous entry is finished with
    the same model_id; settings: what to record about the run. Progress: one "predict" event per case, step =
    cases finished by this rank, message "<case id> <status>". The record goes to predictions.json (one
    process) or predictions.rank<R>.json (torchrun: merge with `merge_records`) after every case.
    """
    from SegCore.inference import read_input

    output = Path(output)
    mine = [case for index, case in enumerate(cases) if index % world_size == rank]
    model_id = predictor.model_id
    earlier = previous_entries(output) if resume else {}
    record_path = output / (RECORD_NAME if world_size == 1 else f"predictions.rank{rank}.json")
    record = {"format": RECORD_FORMAT, "model_id": model_id, "settings": settings or {}, "rank": rank,
              "world_size": world_size, "cases": []}
    add_inputs(p for case in cases for p in case.paths)  # the guard knows every input before the first write
    stop = threading.Event()
    to_network: queue.Queue = queue.Queue(QUEUE_SIZE)
    to_writer: queue.Queue = queue.Queue(QUEUE_SIZE)

    def wanted(case: InputCase) -> list[Path]:
        paths = output_paths(output, case.case_id, fmt)
        return [paths["label"]] + [paths[k] for k, on in (("probabilities", probabilities),
                                                          ("uncertainty", uncertainty)) if on]

    def reader() -> None:
        try:
            for case in mine:
                if _finished(earlier.get(case.case_id), wanted(case), model_id):
                    item = ("skip", case, earlier[case.case_id])
                else:
                    try:
                        image = read_input(list(case.paths), channels=predictor.channels, resample=resample)
                        item = ("image", case, image)
                    except Exception as error:  # this case failed; the next may be fine
                        item = ("failed", case, _one_line(error))
                if not _put(to_network, item, stop):
                    return
            _put(to_network, None, stop)
        except BaseException as error:  # a bug here must stop the job, not leave it waiting for cases
            _put(to_network, ("crash", None, error), stop)

    def writer() -> None:
        try:
            while (item := _get(to_writer, stop)) is not None:
                record["cases"].append(entry := _write(item))
                write_record(record_path, record)
                progress(ProgressEvent("predict", len(record["cases"]), len(mine),
                                       f"{entry['case_id']} {entry['status']}", {"seconds": entry["seconds"]}))
        except BaseException as error:  # the record cannot be written: stop the job with this error
            crashed.append(error)
            stop.set()

    def _write(item) -> dict:
        kind, case, payload, seconds = item
        if kind == "skip":
            return {**_entry(case, "skipped", model_id, rank), "output": payload.get("output"),
                    "files": payload.get("files", []), "warnings": payload.get("warnings", [])}
        if kind == "failed":
            return _entry(case, "failed", model_id, rank, seconds=seconds, error=payload)
        start = time.perf_counter()
        try:
            files = write_prediction(payload, wanted(case)[0], fmt, predictor.labels)
        except Exception as error:
            return _entry(case, "failed", model_id, rank, seconds=seconds, error=_one_line(error))
        return _entry(case, "done", model_id, rank, seconds=seconds + time.perf_counter() - start,
                      output=files[0], files=files, warnings=payload.warnings)

    crashed: list[BaseException] = []
    threads = [_thread(reader), _thread(writer)]
    try:
        while (item := _get(to_network, stop)) is not None:
            kind, case, payload = item
            if kind == "crash":
                raise payload
            if kind == "image":
                start = time.perf_counter()
                try:
                    prediction = predictor.predict(payload, probabilities=probabilities, uncertainty=uncertainty,
                                                   path=case.paths[0])
                    item = ("write", case, prediction, time.perf_counter() - start)
                except Exception as error:  # out of GPU memory included: record it, free the cache, go on
                    _release_gpu_memory(error)
                    item = ("failed", case, _one_line(error), time.perf_counter() - start)
                del payload  # the image is not needed any more; the next one is being read
            else:
                item = (kind, case, payload, 0.0)
            _put(to_writer, item, stop)
        _put(to_writer, None, stop)
        threads[1].join()
    except BaseException:  # Ctrl-C / SIGTERM: let the writer finish its file (atomic), then stop both threads
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        raise
    if crashed:
        raise crashed[0]
    threads[0].join()
    if not mine:
        write_record(record_path, record)
    return record


def _release_gpu_memory(error: BaseException) -> None:
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()


def merge_records(output: Path, world_size: int, model_id: str, settings: dict | None = None) -> dict:
    """Rank 0 after the barrier: join predictions.rank0..N-1.json into predictions.json (cases sorted by id)
    and remove every rank file. Returns the merged record."""
    output = Path(output)
    cases = []
    for rank in range(world_size):
        path = output / f"predictions.rank{rank}.json"
        if not path.is_file():
            raise SegCoreError(f"rank {rank} left no record", path=path,
                               fix="see that rank's error above, then rerun with --resume")
        cases += _read_json(path).get("cases", [])
    record = {"format": RECORD_FORMAT, "model_id": model_id, "settings": settings or {}, "world_size": world_size,
              "cases": sorted(cases, key=lambda entry: entry["case_id"])}
    write_record(output / RECORD_NAME, record)
    for path in output.glob("predictions.rank*.json"):
        path.unlink(missing_ok=True)
    return record


def summary(record: dict) -> dict[str, int]:
    """{"done", "failed", "skipped"} -> number of cases."""
    return {status: sum(entry["status"] == status for entry in record["cases"])
            for status in ("done", "failed", "skipped")}
