"""Static checks of the Slicer side: every SegCore file is installed by CMake, and SegCore stays headless."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cmake_listed_files(cmake_file: Path, variable: str) -> set[str]:
    text = cmake_file.read_text()
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{cmake_file} has no set({variable} ...)"
    return {line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")}


def test_segcore_cmake_lists_every_python_file():
    package = ROOT / "SegCore"
    on_disk = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    listed = cmake_listed_files(package / "CMakeLists.txt", "SegCore_PYTHON_SCRIPTS")
    assert on_disk - listed == set(), "add these to SegCore/CMakeLists.txt"
    assert listed - on_disk == set(), "remove these from SegCore/CMakeLists.txt (no such file)"


def test_top_level_cmake_declares_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "project(SegStudies)" in text
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', text)
    assert "add_subdirectory(SegCore)" in text


def test_nothing_outside_slicer_utils_imports_slicer_qt_ctk_vtk():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk)\b", re.M)
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "SegCore").rglob("*.py")
        if "slicer_utils" not in p.parts and pattern.search(p.read_text())
    ]
    assert offenders == []
