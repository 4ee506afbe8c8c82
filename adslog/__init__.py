"""adslog: the data layer. Datasets on disk (Parquet + manifest), the synthetic ads log, importers,
point-in-time user activity sequences, the feature loader, and the workspace that binds a deployment's
artifacts to its dataset. The shared core (errors, artifacts, progress, safe paths) is `dermcore`."""

from adslog.dataset import Dataset, DatasetWriter
from adslog.schema import ColumnKind, ColumnSpec

__all__ = [
    "ColumnKind",
    "ColumnSpec",
    "Dataset",
    "DatasetWriter",
]
