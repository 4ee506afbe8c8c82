"""adslog: the data layer. Datasets on disk (Parquet + manifest), the synthetic ads log, importers,
point-in-time user activity sequences, the feature loader, and the artifact/workspace helpers every later
stage uses."""

from adslog.artifact import clean_tmp, get_latest, publishing, read_manifest, set_latest
from adslog.dataset import Dataset, DatasetWriter
from adslog.errors import DataError, DermError, VersionMismatchError
from adslog.progress import Progress, no_progress
from adslog.schema import ColumnKind, ColumnSpec

__all__ = [
    "ColumnKind",
    "ColumnSpec",
    "DataError",
    "Dataset",
    "DatasetWriter",
    "DermError",
    "Progress",
    "VersionMismatchError",
    "clean_tmp",
    "get_latest",
    "no_progress",
    "publishing",
    "read_manifest",
    "set_latest",
]
