"""dermcore: the shared core every stage stands on, and the bottom of the import graph (it imports no other
derm package). Domain errors (`dermcore.errors`), artifacts on disk published atomically with a validated
`manifest.json` and a `LATEST` pointer (`dermcore.artifact`), progress callbacks (`dermcore.progress`), safe
path components for names that come from data (`dermcore.safepath`) and crash injection for the crash-safety
tests (`dermcore.faults`)."""

from dermcore.artifact import (
    clean_tmp,
    get_latest,
    make_manifest,
    publishing,
    read_json,
    read_manifest,
    set_latest,
    verify_payload,
    write_json_atomic,
)
from dermcore.errors import (
    ConfigError,
    DataError,
    DermError,
    QualityGateError,
    UnknownUserError,
    VersionMismatchError,
)
from dermcore.faults import crash_point
from dermcore.progress import Progress, ProgressLog, no_progress
from dermcore.safepath import check_component, check_no_symlinks, resolve_under, safe_component

__all__ = [
    "ConfigError",
    "DataError",
    "DermError",
    "Progress",
    "ProgressLog",
    "QualityGateError",
    "UnknownUserError",
    "VersionMismatchError",
    "check_component",
    "check_no_symlinks",
    "clean_tmp",
    "crash_point",
    "get_latest",
    "make_manifest",
    "no_progress",
    "publishing",
    "read_json",
    "read_manifest",
    "resolve_under",
    "safe_component",
    "set_latest",
    "verify_payload",
    "write_json_atomic",
]
