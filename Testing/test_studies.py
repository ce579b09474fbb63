"""SegCore.studies: the study files load, their labels are well-formed, the phantoms and the dataset readers agree
with them on disk, the MSD table matches the challenge, and no other module keeps a copy of their file names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nrrd
import numpy as np
import pytest
import slicerio
from slicerio.segmentation import terminology_entry_from_string

from SegCore.datasets import load_case, open_dataset
from SegCore.errors import SegCoreError
from SegCore.io import read_image, read_label, write_image
from SegCore.phantoms import DECATHLON_TASKS, write_phantom_dataset
from SegCore.studies import STUDIES, get_study
from SegCore.studies.schema import Code, Terminology
from SegCore.studies.terminology import LEFT_THALAMUS, NEOPLASM, PRIMARY_NEOPLASM, RIGHT_THALAMUS, terminology_of
from SegCore.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SLICERIO_DATA = Path(slicerio.__file__).parent / "data"
PHANTOMS = [(name, None) for name in STUDIES if name != "decathlon"] + [("decathlon", t) for t in DECATHLON_TASKS]


def label_sets():
    """(where, labels) for every label set of every study and MSD task."""
    for study in STUDIES.values():
        if study.labels:
            yield study.name, study.labels
        for name, labels in study.label_sets:
            yield f"{study.name}/{name}", labels
        for task in study.tasks:
            yield task.folder, task.labels


def names(labels) -> list[str]:
    return [label.name for label in labels]


def expected(study_name: str, task: str | None):
    """(channel names, label names) the study file promises for a phantom of `study_name` / `task`."""
    study = get_study(study_name)
    if task is None:
        return study.channel_names, study.label_names()
    msd = study.task(task)
    return msd.channels, {label.value: label.name for label in msd.labels}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    folders = {}
    for study, task in PHANTOMS:
        folder = root / f"{study}-{task or ''}"
        write_phantom_dataset(study, folder, cases=2, size_zyx=24, seed=3, task=task or "BrainTumour")
        folders[(study, task)] = folder
    return folders


# --- the study files -----------------------------------------------------------------------------------------------


def test_every_study_loads_by_name_and_unknown_names_list_the_valid_ones():
    assert list(STUDIES) == ["thalamus", "atrium", "muscle", "pancreas", "decathlon"]
    for name, study in STUDIES.items():
        assert get_study(name) is study and study.name == name
        assert study.module.endswith("Seg") and study.title and study.layout.name
        json.dumps(study.to_dict())  # JSON-able, for checkpoints and the Slicer side
    with pytest.raises(SegCoreError) as caught:
        get_study("liver")
    assert "'liver'" in str(caught.value) and all(name in str(caught.value) for name in STUDIES)
    with pytest.raises(SegCoreError, match="BrainTumour"):
        get_study("decathlon").task("Task11_Nothing")


def test_importing_the_studies_loads_nothing_but_the_standard_library():
    code = ("import sys, SegCore; before = set(sys.modules); import SegCore.studies; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert "SegCore.studies.atrium" in loaded
    others = [m for m in loaded if not m.startswith("SegCore.studies") and m.split(".")[0] not in
              sys.stdlib_module_names]
    assert others == []


@pytest.mark.parametrize(("where", "labels"), list(label_sets()), ids=[where for where, _ in label_sets()])
def test_labels_have_unique_values_names_and_valid_distinct_colours(where, labels):
    values = [label.value for label in labels]
    assert values == list(range(len(labels))), "0 is background, then 1..N without gaps"
    assert labels[0].name == "background" and labels[0].colour_rgb == (0, 0, 0)
    assert len({label.name for label in labels}) == len(labels)
    for label in labels:
        assert len(label.colour_rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in label.colour_rgb)
        assert label.colour_source
    assert len({label.colour_rgb for label in labels}) == len(labels), "two labels of one set share a colour"


def test_anatomical_colours_are_slicers_generic_anatomy_colors():
    # Values from Slicer's GenericAnatomyColors table (Colors module), read off the table, not from the code.
    colour = {label.name: label.colour_rgb for _, labels in label_sets() for label in labels}
    assert colour["pancreas"] == (249, 180, 111)
    assert colour["spleen"] == (157, 108, 162)
    assert colour["left atrium"] == (203, 108, 81)
    assert colour["liver"] == (221, 130, 101)
    assert colour["muscle"] == (192, 104, 88)


def test_msd_tasks_are_the_challenges():
    # Independent sources: the tasks' own dataset.json files (names, modalities and labels as spelled there) and
    # the decathlon study's README (num_classes / num_channels per task, docs/studies.md).
    tasks = get_study("decathlon").tasks
    assert [t.folder for t in tasks] == [
        "Task01_BrainTumour", "Task02_Heart", "Task03_Liver", "Task04_Hippocampus", "Task05_Prostate",
        "Task06_Lung", "Task07_Pancreas", "Task08_HepaticVessel", "Task09_Spleen", "Task10_Colon"]
    assert [len(t.labels) for t in tasks] == [4, 2, 3, 3, 3, 2, 3, 3, 2, 2]
    assert [len(t.channels) for t in tasks] == [4, 1, 1, 1, 2, 1, 1, 1, 1, 1]
    brats = get_study("decathlon").task("BrainTumour")
    assert brats.channels == ("FLAIR", "T1w", "t1gd", "T2w") and brats.modality == "MRI"
    assert names(brats.labels) == ["background", "edema", "non-enhancing tumor", "enhancing tumour"]
    assert (brats.num_training, brats.num_test, brats.file_name(1)) == (484, 266, "BRATS_001.nii.gz")
    hippocampus = get_study("decathlon").task("Task04_Hippocampus")
    assert names(hippocampus.labels) == ["background", "Anterior", "Posterior"]
    spleen = get_study("decathlon").task("Spleen")
    assert spleen.modality == "CT" and spleen.channels == ("CT",) and spleen.file_name(2) == "spleen_2.nii.gz"
    prostate = get_study("decathlon").task("Prostate")
    assert prostate.channels == ("T2", "ADC") and names(prostate.labels)[1:] == ["PZ", "TZ"]
    assert [t.modality for t in tasks].count("CT") == 6  # Liver, Lung, Pancreas, HepaticVessel, Spleen, Colon


# --- phantoms and readers agree with the study files on disk -------------------------------------------------------


@pytest.mark.parametrize("key", PHANTOMS, ids=[f"{s}-{t or ''}" for s, t in PHANTOMS])
def test_phantom_read_back_has_the_studys_layout_channels_and_labels(written, key):
    study_name, task = key
    channels, label_names = expected(study_name, task)
    dataset = open_dataset(written[key])
    assert dataset.layout == get_study(study_name).layout.name
    assert dataset.channel_names == channels and dataset.label_names == label_names
    case = dataset.labelled_cases()[0]
    image, label = load_case(case)
    assert image.array.shape[0] == len(channels)
    assert set(np.unique(label.array).tolist()) == set(label_names)  # every label drawn, no other value
    if study_name == "decathlon":  # what the task folder itself says
        description = json.loads((written[key] / "dataset.json").read_text())
        assert description["labels"] == {str(v): n for v, n in label_names.items()}
        assert list(description["modality"].values()) == list(channels)


def test_atrium_files_are_named_and_valued_as_the_study_says(written):
    layout = get_study("atrium").layout
    case = open_dataset(written[("atrium", None)]).labelled_cases()[0]
    assert [p.name for p in case.image_paths] == [layout.image_file] and case.label_path.name == layout.label_file
    raw = read_label(case.label_path).array
    assert set(np.unique(raw).tolist()) == {0, layout.mask_value}
    stored_to_label = dict(layout.label_mapping)
    _, label = load_case(case)
    assert np.array_equal(label.array, np.vectorize(stored_to_label.get)(raw))


def test_thalamus_channel_files_hold_the_quantities_they_are_named_after(written):
    """MD = (evalue1 + 2 RD) / 3 and FA = |evalue1 - RD| / sqrt(evalue1^2 + 2 RD^2) (axially symmetric tensor)
    hold between the files the study names, so each file holds the map its name says."""
    root = written[("thalamus", None)]
    study = get_study("thalamus")
    subject = open_dataset(root).cases[0].case_id
    maps = {c.name: read_image(root / subject / c.file).array.astype(np.float64) for c in study.channels}
    brain = maps["FA"] > 0
    axial, radial = maps["evalue1"][brain], maps["RD"][brain]
    assert np.allclose(maps["MD"][brain], (axial + 2 * radial) / 3, rtol=1e-5)
    assert np.allclose(maps["FA"][brain], np.abs(axial - radial) / np.sqrt(axial**2 + 2 * radial**2), atol=1e-5)
    assert maps["T1"][~brain].mean() > 0  # the T1 is not skull-stripped like the diffusion maps


def test_thalamus_left_and_right_labels_lie_on_the_patients_left_and_right(written):
    study = get_study("thalamus")
    dataset = open_dataset(written[("thalamus", None)], left_right=True)
    assert dataset.label_names == study.label_names("left_right")
    image, label = load_case(dataset.cases[0])
    by_name = {name: value for value, name in dataset.label_names.items()}
    x_mm = {name: image.grid.index_to_lps(np.argwhere(label.array == by_name[name])[:, ::-1])[:, 0].mean()
            for name in ("left thalamus", "right thalamus")}
    assert x_mm["left thalamus"] > x_mm["right thalamus"]  # LPS: +x points to the patient's left


def test_brain_tumour_channels_are_in_the_msd_order(written):
    """Gadolinium enhances the tumour rim on t1gd far more than on any other channel; oedema is brighter than the
    enhancing rim on FLAIR."""
    task = get_study("decathlon").task("BrainTumour")
    image, label = load_case(open_dataset(written[("decathlon", "BrainTumour")]).labelled_cases()[0])
    channel = dict(zip(task.channels, image.array, strict=True))
    value = {label.name: label.value for label in task.labels}
    edema, enhancing = label.array == value["edema"], label.array == value["enhancing tumour"]
    enhancement = {name: array[enhancing].mean() / array[edema].mean() for name, array in channel.items()}
    assert max(enhancement, key=enhancement.get) == "t1gd" and enhancement["t1gd"] > 1.3, enhancement
    assert enhancement["FLAIR"] < 1.0, enhancement


def test_pancreas_and_muscle_files_are_named_as_the_study_says(written):
    pancreas = get_study("pancreas").layout
    root = written[("pancreas", None)]
    assert sorted(p.name for p in (root / pancreas.label_folder).iterdir()) == ["label0001.nii.gz",
                                                                                "label0002.nii.gz"]
    assert sorted(p.name for p in (root / pancreas.images_folder).iterdir()) == ["PANCREAS_0001", "PANCREAS_0002"]
    muscle = get_study("muscle").layout
    for case in open_dataset(written[("muscle", None)]).cases:
        assert case.label_path.name == case.case_id + muscle.label_suffix


def test_unknown_study_or_task_without_phantom_is_refused_before_writing(tmp_path):
    with pytest.raises(SegCoreError, match="thalamus, atrium, muscle, pancreas, decathlon"):
        write_phantom_dataset("liver", tmp_path / "x")
    with pytest.raises(SegCoreError, match="Heart") as caught:
        write_phantom_dataset("decathlon", tmp_path / "x", task="Kidney")
    assert "'Kidney'" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# --- no copies -----------------------------------------------------------------------------------------------------


def _file_name_facts() -> tuple[set[str], set[str]]:
    """The file and folder names the study files declare, as (names no other string may contain, names no other
    string may equal). The second holds the names that are also words of prose: the MSD format's
    ('dataset.json', 'imagesTr', named in the reader's messages) and the TCIA collection's ('Pancreas-CT')."""
    contained, equal = set(), set()
    for study in STUDIES.values():
        layout = study.layout
        names = {c.file for c in study.channels if c.file} | {s.file for s in getattr(layout, "label_sources", ())}
        names |= {value for key, value in vars(layout).items()
                  if isinstance(value, str) and key not in ("name", "unmapped", "default_label_source")}
        names = {n for n in names if not n.startswith(".") and len(n) > 5}  # '.nii.gz', 'label' are too common
        prose = {getattr(layout, "images_folder", "")} | (names if study.name == "decathlon" else set())
        contained |= names - prose
        equal |= names & prose
    return contained, equal


def _string_constants(path: Path):
    """(line, text) of every string constant in `path` that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_module_outside_the_study_files_writes_a_study_file_name_again():
    contained, equal = _file_name_facts()
    assert {"lgemri.nrrd", "diffusion/FA.nii.gz", "Training Set", "TCIA_pancreas_labels", "PANCREAS_"} <= contained
    assert {"dataset.json", "imagesTr", "Pancreas-CT"} <= equal
    copies = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
              for path in sorted((ROOT / "SegCore").rglob("*.py")) if "studies" not in path.parts
              for line, text in _string_constants(path)
              if text in equal or any(fact in text for fact in contained)]
    assert copies == [], "read these from SegCore.studies instead"


# --- terminology: SNOMED CT codes per label, Slicer's TerminologyEntry, carried into .seg.nrrd -------------------

# Read off Slicer's terminology files by hand (SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json "GA",
# SegmentationCategoryTypeModifier-DICOM-Master.json "DM") and DICOM PS3.16 CID 6300, not from the code:
# (label set, label name) -> (list, category value, type value, type meaning, modifier value or None).
SLICER_CODES = {
    ("thalamus", "thalamus"): ("GA", "123037004", "119406000", "Thalamus", None),
    ("thalamus/left_right", "left thalamus"): ("GA", "123037004", "119406000", "Thalamus", "7771000"),
    ("thalamus/left_right", "right thalamus"): ("GA", "123037004", "119406000", "Thalamus", "24028007"),
    ("atrium", "left atrium"): ("DM", "123037004", "82471001", "Left atrium", None),
    ("muscle", "muscle"): ("GA", "85756007", "71616004", "Muscle", None),
    ("pancreas", "pancreas"): ("GA", "123037004", "15776009", "Pancreas", None),
    ("Task01_BrainTumour", "edema"): ("GA", "49755003", "79654002", "Edema", None),
    ("Task01_BrainTumour", "non-enhancing tumor"): ("GA", "49755003", "6574001", "Necrosis", None),
    ("Task01_BrainTumour", "enhancing tumour"): ("DM", "49755003", "108369006", "Neoplasm", None),
    ("Task02_Heart", "left atrium"): ("DM", "123037004", "82471001", "Left atrium", None),
    ("Task03_Liver", "liver"): ("GA", "123037004", "10200004", "Liver", None),
    ("Task03_Liver", "cancer"): ("DM", "49755003", "108369006", "Neoplasm", None),
    ("Task04_Hippocampus", "Anterior"): ("DM", "123037004", "5366008", "Hippocampus", None),
    ("Task04_Hippocampus", "Posterior"): ("DM", "123037004", "5366008", "Hippocampus", None),
    ("Task05_Prostate", "PZ"): ("DM", "123037004", "279706003", "Peripheral zone of the prostate", None),
    ("Task05_Prostate", "TZ"): ("DM", "123037004", "399384005", "Transition zone of the prostate", None),
    ("Task06_Lung", "cancer"): ("DM", "49755003", "86049000", "Neoplasm, Primary", None),
    ("Task07_Pancreas", "pancreas"): ("GA", "123037004", "15776009", "Pancreas", None),
    ("Task07_Pancreas", "cancer"): ("DM", "49755003", "108369006", "Neoplasm", None),
    ("Task08_HepaticVessel", "Vessel"): ("GA", "85756007", "29092000", "Vein", None),
    ("Task08_HepaticVessel", "Tumour"): ("DM", "49755003", "108369006", "Neoplasm", None),
    ("Task09_Spleen", "spleen"): ("GA", "123037004", "78961009", "Spleen", None),
    ("Task10_Colon", "colon cancer primaries"): ("DM", "49755003", "86049000", "Neoplasm, Primary", None),
}
CONTEXTS = {"GA": "Segmentation category and type - 3D Slicer General Anatomy list",
            "DM": "Segmentation category and type - DICOM master list"}
CATEGORIES = {"123037004": "Anatomical Structure", "85756007": "Tissue",
              "49755003": "Morphologically Altered Structure"}


def test_every_label_but_the_background_has_the_snomed_codes_of_slicers_lists():
    seen = set()
    for where, labels in label_sets():
        assert labels[0].terminology is None, f"{where}: the background has no terminology"
        for label in labels[1:]:
            key = (where, label.name)
            seen.add(key)
            assert key in SLICER_CODES, f"{key} has no expected codes"
            context, category, type_value, type_meaning, modifier = SLICER_CODES[key]
            term = label.terminology
            assert term is not None and term.context == CONTEXTS[context] and term.source
            assert (term.category.scheme, term.category.value, term.category.meaning) == (
                "SCT", category, CATEGORIES[category])
            assert (term.type.scheme, term.type.value, term.type.meaning) == ("SCT", type_value, type_meaning)
            assert (term.modifier.value if term.modifier else None) == modifier
            if modifier:
                assert term.modifier.scheme == "SCT" and term.modifier.meaning in label.name.title()
    assert seen == set(SLICER_CODES)


def test_the_entry_string_is_slicers_and_round_trips():
    # Slicer's own sample segmentations (written by Slicer, shipped with slicerio): every tag, with a modifier
    # or not, from either list, parses and is written back character for character.
    slicer_written = set().union(*(_tag_texts(path) for path in sorted(SLICERIO_DATA.glob("*.seg.nrrd"))))
    assert len(slicer_written) >= 8
    for text in slicer_written:
        assert Terminology.from_slicer_entry(text).to_slicer_entry() == text
    # Ours, as slicerio (an independent parser) reads them, give back the study's codes.
    for _, labels in label_sets():
        for label in labels[1:]:
            term = label.terminology
            text = term.to_slicer_entry()
            assert Terminology.from_slicer_entry(text) == term
            parsed = terminology_entry_from_string(text)
            assert parsed["contextName"] == term.context
            assert parsed["category"] == [term.category.scheme, term.category.value, term.category.meaning]
            assert parsed["type"] == [term.type.scheme, term.type.value, term.type.meaning]
            assert parsed.get("typeModifier") == (
                [term.modifier.scheme, term.modifier.value, term.modifier.meaning] if term.modifier else None)
            assert parsed["anatomicContextName"] == "Anatomic codes - DICOM master list"
            assert "anatomicRegion" not in parsed
    # By hand, from Slicer's serialisation (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry).
    assert get_study("thalamus").label_set("left_right")[2].terminology.to_slicer_entry() == (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
        "~SCT^119406000^Thalamus~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^")
    for bad in ("", "a~b", "ctx~SCT^1^a~SCT^2~^^~~^^~^^", "ctx~^^~SCT^2^b~^^~~^^~^^"):
        with pytest.raises(SegCoreError, match="TerminologyEntry"):
            Terminology.from_slicer_entry(bad)
    tissue = Code("SCT", "85756007", "Tissue")
    with pytest.raises(SegCoreError, match="cannot carry"):
        Terminology(tissue, Code("SCT", "1", "a~b")).to_slicer_entry()


def test_terminology_is_found_by_study_value_and_name():
    assert terminology_of("thalamus", 2, "Right Thalamus") == RIGHT_THALAMUS  # a label set, any case
    assert terminology_of("thalamus", 1, "left thalamus") == LEFT_THALAMUS
    assert terminology_of("decathlon", 2, "cancer") == NEOPLASM  # Liver and Pancreas agree
    assert terminology_of("decathlon", 1, "cancer") == PRIMARY_NEOPLASM  # Lung
    assert terminology_of("decathlon", 3, "cancer") is None
    assert terminology_of(None, 1, "left atrium") is None and terminology_of("liver", 1, "liver") is None
    assert terminology_of("atrium", 0, "background") is None


def test_segcore_predict_writes_each_segments_terminology_entry(tmp_path):
    from inference_models import tiny_checkpoint
    from training_runs import ENV, REPO

    model = tiny_checkpoint(tmp_path / "brats.pt", "unet3d", plan={"study": "decathlon"}, study="decathlon",
                            size_zyx=(16, 24, 24))
    rng = np.random.default_rng(0)
    image = Volume.create(rng.normal(0.0, 1.0, (4, 12, 20, 24)).astype(np.float32), (1.0, 1.0, 1.5))
    source = write_image(image, tmp_path / "case.nii.gz")
    output = tmp_path / "case.seg.nrrd"
    result = subprocess.run([sys.executable, "-m", "SegCore", "predict", "--device", "cpu", "--model", str(model),
                             "--input", str(source), "--output", str(output), "--no-postprocess"],
                            capture_output=True, text=True, timeout=180, env=ENV, cwd=REPO)
    assert result.returncode == 0, result.stderr
    segments = slicerio.read_segmentation(str(output), skip_voxels=True)["segments"]
    brats = get_study("decathlon").task("BrainTumour").labels
    assert [(s["labelValue"], s["name"]) for s in segments] == [(label.value, label.name) for label in brats[1:]]
    for segment, label in zip(segments, brats[1:], strict=True):
        context, category, type_value, type_meaning, _ = SLICER_CODES[("Task01_BrainTumour", label.name)]
        assert segment["terminology"]["contextName"] == CONTEXTS[context]
        assert segment["terminology"]["category"] == ["SCT", category, CATEGORIES[category]]
        assert segment["terminology"]["type"] == ["SCT", type_value, type_meaning]
        assert "typeModifier" not in segment["terminology"]
    assert _tag_texts(output) >= {  # the tag itself, as pynrrd reads the header
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
        "Structure~SCT^79654002^Edema~^^~Anatomic codes - DICOM master list~^^~^^"}


def _tag_texts(path: Path) -> set[str]:
    """Every TerminologyEntry value in the header of the .seg.nrrd at `path`, as pynrrd reads the header (an
    oracle independent of SegCore.io)."""
    header = nrrd.read_header(str(path))
    return {tag.partition(":")[2] for key, value in header.items() if key.endswith("_Tags")
            for tag in value.split("|") if tag.startswith("TerminologyEntry:")}


def test_a_checkpoint_takes_colour_and_terminology_from_the_study_label():
    from SegCore.training.checkpoint import checkpoint_meta
    from SegCore.training.config import resolve_plan

    study = get_study("thalamus")
    right = study.label_set("left_right")[2]
    plan = resolve_plan({"study": "thalamus", "model": {"name": "unet2d"}}, inspect_data=False)
    plan["data"]["label_set"] = [{"value": 0, "name": "background"}, {"value": 2, "name": "right thalamus"}]
    plan["data"]["channels"] = ["FA"]
    meta = checkpoint_meta(plan)
    # the study's own colour for the right thalamus (not a fallback palette entry, not the left one's)
    left = study.label_set("left_right")[1]
    assert meta["labels"][1]["colour_rgb"] == list(right.colour_rgb) != list(left.colour_rgb)
    assert meta["labels"][1]["terminology"] == right.terminology.to_slicer_entry()
