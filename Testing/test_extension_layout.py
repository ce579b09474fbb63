"""Static checks of the Slicer side: what CMake installs, what the modules' files may import, and that the
Python code, the .ui files and the parameter nodes name the same widgets and fields.

No Slicer runs here (the Qt widgets are only checked by reading them): the .ui files are parsed as XML, the
module files with `ast`, and names are compared across them. Inside Slicer each module's XSegTest runs it.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from SegCore.studies import STUDIES

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("ThalamusSeg", "AtriumSeg", "MuscleSeg", "PancreasSeg", "DecathlonSeg")
SLICER_UTILS = ROOT / "SegCore" / "slicer_utils"
PANEL_UI = SLICER_UTILS / "Resources" / "UI"
GUI_FILES = ("widget.py", "segment_panel.py", "train_panel.py", "review_panel.py")
MAX_MODULE_LINES = 300
# What a module file, or the shared GUI code, may import when Slicer loads it: the standard library, Slicer's own
# Python (qt, ctk, vtk, slicer) and these light parts of SegCore. Everything else (numpy's users, torch, SimpleITK,
# the inference and training stages, the logic and its subprocess runner) is imported inside functions.
SLICER_PYTHON = {"qt", "ctk", "vtk", "slicer"}
LIGHT_SEGCORE = {"SegCore.errors", "SegCore.atomic", "SegCore.studies", "SegCore.slicer_utils.widget",
                 "SegCore.slicer_utils.module"}
EXTENSION_FIELDS = ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "CATEGORY", "DEPENDS")


def cmake_listed_files(cmake_file: Path, variable: str) -> set[str]:
    text = cmake_file.read_text()
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{cmake_file} has no set({variable} ...)"
    names = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text)
    lines = {line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")}
    return {line.replace("${MODULE_NAME}", names.group(1)) if names else line for line in lines}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}


def module_tree(module: str) -> ast.Module:
    return ast.parse((ROOT / module / f"{module}.py").read_text())


def ui_root(path: Path) -> ElementTree.Element:
    return ElementTree.parse(path).getroot()


def ui_widget_names(path: Path) -> set[str]:
    return {w.get("name") for w in ui_root(path).iter("widget")}


def ui_parameter_names(path: Path) -> set[str]:
    names = set()
    for widget in ui_root(path).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names.add(prop.findtext("string"))
    return names


def attribute_names(tree: ast.AST, owner: str) -> set[str]:
    """X of every `self.<owner>.X` (owner 'ui', 'module_ui') in the tree."""
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute) and node.value.attr == owner
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}


def panel_attribute_names(tree: ast.AST, panel: str) -> set[str]:
    """X of every `self.<panel>.ui.X` (StudyWidget reaching into one of its panels)."""
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == panel
            and isinstance(node.value.value.value, ast.Name) and node.value.value.value.id == "self"}


def guarded_names(tree: ast.AST) -> set[str]:
    """Names looked up only through hasattr/getattr(..., "name") (optional widgets such as taskComboBox)."""
    return {node.args[1].value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)}


def top_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported when the file is imported: module-level statements, also inside a top-level if/try."""
    found, body = set(), list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
        elif isinstance(node, ast.If | ast.Try):
            body += node.body + node.orelse + getattr(node, "finalbody", []) + [
                statement for handler in getattr(node, "handlers", []) for statement in handler.body]
    return found


def is_light(name: str) -> bool:
    top = name.split(".")[0]
    if top == "SegCore":
        return any(name == light or name.startswith(light + ".") for light in LIGHT_SEGCORE)
    return top in sys.stdlib_module_names or top in SLICER_PYTHON or top == "__future__"


def channel_count(module: str) -> int:
    study = next(s for s in STUDIES.values() if s.module == module)
    return max(len(task.channels) for task in study.tasks) if study.tasks else len(study.channels)


# -- CMake: every file installed --------------------------------------------------------------------------------
def test_segcore_cmake_lists_every_python_file():
    package = ROOT / "SegCore"
    on_disk = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    listed = cmake_listed_files(package / "CMakeLists.txt", "SegCore_PYTHON_SCRIPTS")
    assert on_disk - listed == set(), "add these to SegCore/CMakeLists.txt"
    assert listed - on_disk == set(), "remove these from SegCore/CMakeLists.txt (no such file)"


def test_segcore_cmake_lists_every_resource():
    on_disk = {name for name in files_under(ROOT / "SegCore") if not name.endswith(".py")}
    listed = cmake_listed_files(ROOT / "SegCore" / "CMakeLists.txt", "SegCore_PYTHON_RESOURCES")
    assert on_disk == listed, "SegCore_PYTHON_RESOURCES must list exactly the non-Python files under SegCore/"


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_every_file(module):
    folder = ROOT / module
    text = (folder / "CMakeLists.txt").read_text()
    on_disk = files_under(folder)
    scripts = cmake_listed_files(folder / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    resources = cmake_listed_files(folder / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")
    assert scripts == {name for name in on_disk if name.endswith(".py")}
    assert resources == {name for name in on_disk if not name.endswith(".py")}
    assert f"set(MODULE_NAME {module})" in text
    assert re.search(r"slicerMacroBuildScriptedModule\((?:[^)]*?)WITH_GENERIC_TESTS", text, re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_top_level_cmake_declares_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "project(SegStudies)" in text
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', text)
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Segmentation"\)', text)
    for field in EXTENSION_FIELDS:
        match = re.search(rf'set\(EXTENSION_{field}\s+"([^"]*)"\)', text)
        assert match and match.group(1).strip(), f"EXTENSION_{field} is empty"
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    added = re.findall(r"add_subdirectory\((\w+)\)", text)
    assert added == ["SegCore", *MODULES]
    icon = (ROOT / "SegStudies.png").read_bytes()  # the extension icon that EXTENSION_ICONURL names
    assert icon[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_study_has_its_module():
    assert {study.module for study in STUDIES.values()} == set(MODULES)
    for module in MODULES:
        assert (ROOT / module / f"{module}.py").is_file()


def test_nothing_outside_slicer_utils_imports_slicer_qt_ctk_vtk():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk)\b", re.M)
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "SegCore").rglob("*.py")
        if "slicer_utils" not in p.parts and pattern.search(p.read_text())
    ]
    assert offenders == []


# -- .ui files ------------------------------------------------------------------------------------------------
UI_FILES = [ROOT / m / "Resources" / "UI" / f"{m}.ui" for m in MODULES] + sorted(PANEL_UI.glob("*.ui"))


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_is_well_formed_and_every_mrml_widget_gets_the_scene(path):
    root = ui_root(path)  # raises on malformed XML
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top is not None and top.get("name") == root.findtext("class")
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique (childWidgetVariables uses them)"
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class", "").startswith("qMRML")} - {top.get("name")}
    scene_signal = ("mrmlSceneChanged(vtkMRMLScene*)", "setMRMLScene(vtkMRMLScene*)")
    connected = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("sender") == top.get("name")
                 and (c.findtext("signal"), c.findtext("slot")) == scene_signal}
    assert mrml <= connected, "a node selector without the scene connection shows no nodes"
    if mrml:
        assert top.get("class") == "qMRMLWidget"
    customs = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget") if w.get("class", "")[:3] in ("ctk", "qMR")}
    assert used <= customs, "declare every ctk/qMRML class among the customwidgets"


@pytest.mark.parametrize("module", MODULES)
def test_module_ui_has_the_names_the_shared_widget_uses(module):
    names = ui_widget_names(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    count = channel_count(module)
    assert {f"inputSelector{i}" for i in range(count)} | {f"inputLabel{i}" for i in range(count)} <= names
    assert f"inputSelector{count}" not in names, "one selector per channel (the widget counts them)"
    assert ("taskComboBox" in names) == (module == "DecathlonSeg")
    for file in ("widget.py", *GUI_FILES[1:]):
        tree = ast.parse((SLICER_UTILS / file).read_text())
        owner = "ui" if file == "widget.py" else "module_ui"
        wanted = attribute_names(tree, owner) - guarded_names(tree)
        assert wanted <= names, f"{file} uses {sorted(wanted - names)}, missing from {module}.ui"


@pytest.mark.parametrize("module", MODULES)
def test_module_file_uses_only_names_of_its_ui(module):
    names = ui_widget_names(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    assert attribute_names(module_tree(module), "ui") <= names


@pytest.mark.parametrize("file", GUI_FILES[1:])
def test_panel_uses_only_names_of_its_ui(file):
    tree = ast.parse((SLICER_UTILS / file).read_text())
    loaded = [node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name) and node.func.id == "load_panel"]
    assert len(loaded) == 1, f"{file} loads one panel .ui"
    path = PANEL_UI / loaded[0]
    assert attribute_names(tree, "ui") <= ui_widget_names(path), f"{file} uses names missing from {path.name}"
    assert ui_parameter_names(path) == set(), "the shared panels keep settings, not parameter-node fields"


def test_study_widget_uses_only_names_of_the_panels_uis():
    tree = ast.parse((SLICER_UTILS / "widget.py").read_text())
    for panel, ui_file in (("segment", "SegmentPanel.ui"), ("train", "TrainPanel.ui"), ("review", "ReviewPanel.ui")):
        assert panel_attribute_names(tree, panel) <= ui_widget_names(PANEL_UI / ui_file), ui_file
    assert panel_attribute_names(tree, "segment") and panel_attribute_names(tree, "train")


@pytest.mark.parametrize("module", MODULES)
def test_slicer_parameter_names_are_the_parameter_node_fields(module):
    tree = module_tree(module)
    wrapped = [node for node in tree.body if isinstance(node, ast.ClassDef) and any(
        isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list)]
    assert [node.name for node in wrapped] == [f"{module}ParameterNode"]
    fields = {item.target.id for item in wrapped[0].body if isinstance(item, ast.AnnAssign)}
    bound = ui_parameter_names(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    assert bound <= fields, f"SlicerParameterName {sorted(bound - fields)} is no field of {module}ParameterNode"
    assert fields <= bound, f"fields {sorted(fields - bound)} have no widget in {module}.ui"
    assert {f"input_volume{i}" for i in range(channel_count(module))} <= fields


# -- module files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_module_file_compiles_and_imports_nothing_heavy(module, tmp_path):
    path = ROOT / module / f"{module}.py"
    py_compile.compile(str(path), cfile=str(tmp_path / "module.pyc"), doraise=True)
    heavy = sorted(name for name in top_level_imports(module_tree(module)) if not is_light(name))
    assert heavy == [], f"import these inside functions: {heavy}"
    assert len(path.read_text().splitlines()) < MAX_MODULE_LINES


@pytest.mark.parametrize("file", [*GUI_FILES, "module.py", "display.py", "sample_data.py", "selftest.py"])
def test_shared_gui_code_imports_nothing_heavy(file, tmp_path):
    path = SLICER_UTILS / file
    py_compile.compile(str(path), cfile=str(tmp_path / "file.pyc"), doraise=True)
    heavy = sorted(n for n in top_level_imports(ast.parse(path.read_text())) if not is_light(n))
    assert heavy == [], f"import these inside functions: {heavy}"


def _call_name(node) -> str:
    return node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else ""


@pytest.mark.parametrize("module", MODULES)
def test_module_has_the_five_classes_and_translatable_texts(module):
    tree = module_tree(module)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in node.bases] for name, node in classes.items()}
    assert bases[module] == ["ScriptedLoadableModule"]
    assert bases[f"{module}Widget"] == ["StudyModuleWidget"]
    assert bases[f"{module}Logic"] == ["StudyModuleLogic"]  # ScriptedLoadableModuleLogic, written once
    assert bases[f"{module}Test"] == ["StudyModuleTest"]  # ScriptedLoadableModuleTest, written once
    assert f"{module}ParameterNode" in classes
    init = next(f for f in classes[module].body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    texts = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            texts[node.targets[0].attr] = node.value
    for key in ("title", "helpText", "acknowledgementText"):
        assert _call_name(texts[key]) == "_", f"{module}: parent.{key} must be wrapped in _() for translation"
    category = texts["categories"].elts[0]
    assert _call_name(category) == "translate" and category.args[1].value == "Segmentation"
    study = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "STUDY")
    assert STUDIES[study].module == module


def _string_tuple(node) -> tuple:
    return tuple(item.value for item in node.elts)


@pytest.mark.parametrize("module", MODULES)
def test_train_options_are_plan_keys_with_the_preset_first(module):
    from SegCore.training.config import resolve_plan

    tree = module_tree(module)
    values = {node.targets[0].id: node.value for node in tree.body if isinstance(node, ast.Assign)
              and isinstance(node.targets[0], ast.Name)}
    study = values["STUDY"].value
    options = [(item.elts[1].value, _string_tuple(item.elts[2])) for item in values["TRAIN_OPTIONS"].elts]
    assert options, f"{module} names its main training options"
    preset = resolve_plan(None, flags={"study": study}, inspect_data=False)
    for key, choices in options:
        node = preset
        for part in key.split("."):
            node = node[part]
        first = json.loads(choices[0]) if choices[0] in ("true", "false") else choices[0]
        assert first == node, f"{module}: the first choice of {key} must be the preset's {node!r}"
        for choice in choices:
            resolve_plan(None, flags={"study": study}, inspect_data=False, overrides=[f"{key}={choice}"])
    resolve_plan(None, flags={"study": study}, inspect_data=False,
                 overrides=list(_string_tuple(values["SELF_TEST_OVERRIDES"])))


@pytest.mark.parametrize("module", MODULES)
def test_module_icon_is_a_png(module):
    data = (ROOT / module / "Resources" / "Icons" / f"{module}.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 32 <= width == height <= 256


def test_the_slicer_guide_exists_and_the_readme_points_to_it():
    guide = (ROOT / "docs" / "slicer.md").read_text()
    for needed in ("--no-main-window --python-script SegCore/train.py --study", "Import model", "Cancel",
                   "SEGSTUDIES_MODELS", "Minimum Slicer version"):
        assert needed in guide
    assert "docs/slicer.md" in (ROOT / "README.md").read_text()
