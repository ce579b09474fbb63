"""Notes of an evaluation: what the user should know about the inputs, said once per finding with its cases.

A finding that concerns many cases (a value outside the requested labels in every file, say) is one note that
counts and lists the cases, not one line per case. `segcore evaluate` prints them; metrics.json keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from SegCore.metrics.cases import listed


def _values(values: Iterable[int]) -> str:
    return listed([str(v) for v in sorted(values)])


class Notes:
    """Collects findings while cases are evaluated; `lines()` gives the notes in a fixed order."""

    def __init__(self):
        self._unpaired: list[str] = []
        self._pasted: dict[str, list[str]] = {}  # whose grid -> cases
        self._unscored: dict[tuple[int, str], list[str]] = {}  # (value, which files) -> cases
        self._absent: dict[tuple[int, str], tuple[list[str], set[int]]] = {}  # (value, name) -> cases, others
        self._other: list[str] = []

    def unpaired(self, group: str, extra: list[str]) -> None:
        """Predictions of `group` without a reference (not scored)."""
        if extra:
            self._unpaired.append(f"{group}: {len(extra)} prediction(s) without a reference were not scored: "
                                  f"{listed(extra)}")

    def pasted(self, case: str, onto: str) -> None:
        """The prediction ('reference': pasted onto its grid) or the reference ('prediction') covers another
        extent of the same voxel lattice."""
        self._pasted.setdefault(onto, []).append(case)

    def check_requested(self, case: str, labels: dict[int, str], pred_values: set[int], ref_values: set[int]
                        ) -> None:
        """Values in the files that the requested labels leave out, and requested labels in neither file while
        such values are there (0/255 masks scored with label 1, say)."""
        present = pred_values | ref_values
        for value in sorted(present - set(labels)):
            files = ("prediction and reference" if value in pred_values and value in ref_values
                     else "prediction" if value in pred_values else "reference")
            self._unscored.setdefault((value, files), []).append(case)
        unrequested = present - set(labels)
        if not unrequested:
            return  # a requested label absent from files that hold only requested ones is a true 'absent'
        for value, name in labels.items():
            if value not in present:
                cases, others = self._absent.setdefault((value, name), ([], set()))
                cases.append(case)
                others.update(unrequested)

    def cohort_names(self, rows: list[dict], default: Callable[[int], str]) -> dict[int, str]:
        """One name per label value over the cohort: the first name other than the default one; a note when
        cases name a value differently."""
        seen: dict[int, dict[str, list[str]]] = {}
        for row in rows:
            seen.setdefault(row["label"], {}).setdefault(row["label_name"], []).append(row["case"])
        names = {}
        for value, by_name in sorted(seen.items()):
            named = [name for name in by_name if name != default(value)]
            names[value] = named[0] if named else default(value)
            if len(named) > 1:
                self._other.append(f"label {value} is named differently by the files: "
                                   + "; ".join(f"{name!r} in {listed(sorted(set(by_name[name])))}" for name in named)
                                   + f"; the tables call it {names[value]!r}")
        return names

    def nothing_labelled(self, num_cases: int) -> None:
        self._other.append(f"none of the {num_cases} case(s) has a non-zero value in its prediction or reference, "
                           "so there is no label to score; pass the labels to score them as both_empty")

    def lines(self) -> list[str]:
        lines = list(self._unpaired)
        if "reference" in self._pasted:
            cases = self._pasted["reference"]
            lines.append(f"{len(cases)} prediction(s) cover another extent of the reference's voxel lattice "
                         f"(same spacing and direction, other size or offset): pasted onto the reference grid and "
                         f"compared voxel for voxel, without resampling: {listed(cases)}")
        if "prediction" in self._pasted:
            cases = self._pasted["prediction"]
            lines.append(f"{len(cases)} reference(s) cover only part of the prediction's voxel lattice: compared on "
                         f"the prediction's grid, voxel for voxel, without resampling: {listed(cases)}")
        for (value, files), cases in self._unscored.items():
            lines.append(f"value {value} is in the {files} of {len(cases)} case(s) but is not scored: it is not one "
                         f"of the requested labels: {listed(cases)}")
        for (value, name), (cases, others) in self._absent.items():
            lines.append(f"requested label {value} ({name}) is in neither the prediction nor the reference of "
                         f"{len(cases)} case(s), which hold unrequested values ({_values(others)}): scored "
                         f"both_empty (Dice 1); check the label values: {listed(cases)}")
        return lines + self._other
