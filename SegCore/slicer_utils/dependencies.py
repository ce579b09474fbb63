"""SegCore's Python requirements inside 3D Slicer: what is missing, and installing it when the user agrees.

    missing = missing_requirements()           # [] when everything is installed; e.g. ["nibabel>=5.0"]
    if missing:
        outcome = install_requirements(confirm=lambda text: slicer.util.confirmOkCancelDisplay(text))
        if outcome["restart_needed"] and slicer.util.confirmYesNoDisplay("Restart Slicer now?"):
            slicer.util.restart()

Called on the first Segment or Train, never at start-up. torch comes through the PyTorch extension's
PyTorchUtils (it picks the wheel for the machine's CUDA driver); the rest with `slicer.packaging.pip_ensure`
(Slicer 5.12) or `slicer.util.pip_install` (5.10). numpy and SimpleITK are Slicer's own: they are never
installed or upgraded here (pip gets a constraints file pinning the installed versions), and a missing one is
reported as a broken Slicer, not fixed. In testing mode nothing is installed and nothing asks. `slicer` is
imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence

from SegCore.errors import SegCoreError

# pyproject.toml's [project] dependencies, spelled out (Slicer does not see that file; Testing compares them).
REQUIREMENTS = ("torch>=2.1", "numpy>=1.24", "scipy>=1.10", "SimpleITK>=2.2", "nibabel>=5.0", "matplotlib>=3.7")
SLICER_OWNED = ("numpy", "SimpleITK")  # bundled with Slicer: never replaced
IMPORT_NAMES = {"simpleitk": "SimpleITK", "scikit-image": "skimage", "pillow": "PIL"}
MINIMUM_TORCH = ">=2.1"
REQUESTER = "SegStudies"
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*$")


def _name_and_specifier(requirement: str) -> tuple[str, str]:
    found = _REQUIREMENT.match(requirement.split(";")[0])
    if not found:
        raise SegCoreError(f"not a requirement: {requirement!r}", fix="write NAME or NAME>=VERSION")
    return found.group(1), found.group(2)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(n) for n in numbers.group(1).split(".")) if numbers else ()


def _satisfies(version: str, specifier: str) -> bool:
    """Whether `version` meets `specifier` (PEP 440 through `packaging` when importable, else the >=, >, ==,
    <, <= and != comparisons of release numbers, which is all SegCore's requirements use)."""
    if not specifier:
        return True
    with contextlib.suppress(ImportError, ValueError):
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    have = _release(version)
    for clause in specifier.split(","):
        found = re.match(r"^\s*(>=|<=|==|!=|>|<|~=)\s*(\S+)\s*$", clause)
        if not found:
            return False
        op, wanted = found.group(1), _release(found.group(2))
        width = max(len(have), len(wanted))
        a, b = have + (0,) * (width - len(have)), wanted + (0,) * (width - len(wanted))
        ok = {">=": a >= b, "~=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b}[op]
        if not ok:
            return False
    return True


def installed_version(name: str) -> str | None:
    """The installed version of distribution `name`; '' when only importable (a package Slicer built itself has
    no metadata); None when absent."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(name)
    module = IMPORT_NAMES.get(_canonical(name), name)
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec(module) is not None:
            return ""
    return None


def missing_requirements(requirements: Sequence[str] = REQUIREMENTS) -> list[str]:
    """The requirements not met here, as given ("nibabel>=5.0"); an installed but too old package counts as
    missing. A package found without metadata (built into Slicer) counts as met. Installs nothing."""
    missing = []
    for requirement in requirements:
        name, specifier = _name_and_specifier(requirement)
        version = installed_version(name)
        if version is None or (version and not _satisfies(version, specifier)):
            missing.append(requirement)
    return missing


def _is_slicer_owned(requirement: str) -> bool:
    return _canonical(_name_and_specifier(requirement)[0]) in {_canonical(n) for n in SLICER_OWNED}


def constraints_text() -> str:
    """pip constraints pinning Slicer's own packages at their installed versions (those that have metadata)."""
    lines = []
    for name in SLICER_OWNED:
        version = installed_version(name)
        if version:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def install_requirements(confirm: Callable[[str], bool], requirements: Sequence[str] = REQUIREMENTS) -> dict:
    """Install what `missing_requirements` lists, inside Slicer, after `confirm(message)` returns True.

    Returns {"installed": [requirements], "restart_needed": bool} (a package that was already imported was
    replaced on disk: Slicer must restart before it is used). Raises SegCoreError when the user declines, when
    Slicer's own numpy or SimpleITK is missing or too old, in testing mode, or when an installer fails.
    """
    import slicer

    missing = missing_requirements(requirements)
    if not missing:
        return {"installed": [], "restart_needed": False}
    owned = [r for r in missing if _is_slicer_owned(r)]
    if owned:
        raise SegCoreError(f"Slicer's own {', '.join(owned)} is missing or too old, and SegStudies does not replace "
                           "it", fix="install a Slicer release this extension supports (see the README)")
    if getattr(slicer, "app", None) is not None and slicer.app.testingEnabled():
        raise SegCoreError(f"missing Python packages in testing mode: {', '.join(missing)}",
                           fix="install them before running the tests; nothing is installed in testing mode")
    torch = [r for r in missing if _canonical(_name_and_specifier(r)[0]) == "torch"]
    others = [r for r in missing if r not in torch]
    message = (f"{REQUESTER} needs these Python packages: {', '.join(missing)}. "
               + ("PyTorch comes through the PyTorch extension (a download of up to a few GB). " if torch else "")
               + "This needs a network connection and may take several minutes. Install them now?")
    if not confirm(message):
        raise SegCoreError(f"the Python packages {', '.join(missing)} were not installed",
                           fix="install them when asked, or offline: see the README, 'Offline install'")
    already_imported = [r for r in missing if IMPORT_NAMES.get(_canonical(_name_and_specifier(r)[0]),
                                                               _name_and_specifier(r)[0]) in sys.modules]
    if torch:
        _install_torch(torch[0])
    if others:
        _pip_install(slicer, others)
    return {"installed": list(missing), "restart_needed": bool(already_imported)}


def _install_torch(requirement: str) -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise SegCoreError("PyTorch is not installed and the PyTorch extension is missing",
                           fix="install the 'PyTorch' extension from the Extensions Manager, restart Slicer and "
                               "try again") from None
    specifier = _name_and_specifier(requirement)[1] or MINIMUM_TORCH
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.installTorch(askConfirmation=False, torchVersionRequirement=specifier) is None:
        raise SegCoreError("PyTorch could not be installed", fix="open the PyTorch Utils module, install it there "
                           "(choose the computation backend), restart Slicer and try again")


def _pip_install(slicer, requirements: list[str]) -> None:
    """pip_ensure on Slicer 5.12 (its progress dialog and restart prompt), pip_install on 5.10; either way with
    a constraints file that keeps Slicer's numpy and SimpleITK where they are."""
    handle, constraints = tempfile.mkstemp(prefix="segstudies-constraints-", suffix=".txt")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(constraints_text())
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            from packaging.requirements import Requirement

            packaging.pip_ensure([Requirement(r) for r in requirements], constraints=constraints,
                                 prompt_install=False, requester=REQUESTER)  # the user agreed in install_requirements
        else:
            slicer.util.pip_install([*requirements, "-c", constraints])
    except SegCoreError:
        raise
    except Exception as error:  # pip's failures come in many types; the user needs its message
        raise SegCoreError(f"installing {', '.join(requirements)} failed: {error}",
                           fix="check the network connection (or install offline: see the README) and retry") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(constraints)
    still = missing_requirements(requirements)
    if still:
        raise SegCoreError(f"after installing, still missing: {', '.join(still)}",
                           fix="restart Slicer; if they are still missing, see the README, 'Dependency conflicts'")
