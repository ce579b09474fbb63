"""The five studies as data: one declarative file each, the one place their facts are written.

    from SegCore.studies import get_study

    atrium = get_study("atrium")
    atrium.layout.image_file, atrium.layout.label_file      # 'lgemri.nrrd', 'laendo.nrrd'
    atrium.label_names()                                    # {0: 'background', 1: 'left atrium'}
    get_study("decathlon").task("BrainTumour").channels     # ('FLAIR', 'T1w', 't1gd', 'T2w')

Labels (value, name, colour, terminology), channels and their files, the dataset layout's file names and label
rule, and the Decathlon's ten tasks live here; SegCore.datasets, SegCore.phantoms and the CLI read them. The
package imports only the standard library and SegCore.errors, so `segcore --help` lists its choices cheaply.
"""

from SegCore.errors import SegCoreError
from SegCore.studies import atrium, decathlon, muscle, pancreas, thalamus
from SegCore.studies.schema import Channel, Code, Label, Layout, MsdTask, Study, Terminology

# In the order the CLI lists them.
STUDIES: dict[str, Study] = {module.STUDY.name: module.STUDY for module in (thalamus, atrium, muscle, pancreas,
                                                                             decathlon)}


def get_study(name: str) -> Study:
    """The study called `name`; SegCoreError listing the studies otherwise."""
    if name not in STUDIES:
        raise SegCoreError(f"unknown study {name!r}", fix=f"use one of {', '.join(STUDIES)}")
    return STUDIES[name]


__all__ = ["STUDIES", "Channel", "Code", "Label", "Layout", "MsdTask", "Study", "Terminology", "get_study"]
