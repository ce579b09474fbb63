"""SegCore: the computing core of SegStudies (volumes, I/O, datasets, models, training, inference, metrics).

Importing SegCore is cheap: heavy parts (torch, SimpleITK) load inside the stages that need them.
"""

from SegCore.errors import SegCoreError
from SegCore.volume import Grid, Volume

__version__ = "0.1.0"
__all__ = ["Grid", "SegCoreError", "Volume", "__version__"]
