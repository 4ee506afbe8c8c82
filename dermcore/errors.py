"""Domain errors. Library code raises these; `cli.py` turns them into `Error: ...` and exit code 1."""

from __future__ import annotations

from pathlib import Path


class DermError(Exception):
    """Any error a user can act on: bad input, missing artifact, version skew."""


class ConfigError(DermError, ValueError):
    """A config's `__post_init__` refused a value (a user's choice, bad input like any other). Also a ValueError,
    so callers that caught the configs' ValueError keep working; any other ValueError is a bug."""


class DataError(DermError):
    """A problem with one file or directory: the message reads `<path>: <problem>`."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class VersionMismatchError(DermError):
    """Two artifacts that must come from the same upstream version do not."""


class QualityGateError(DermError):
    """A new version failed a quality gate and was not published; the previous version stays live."""


class UnknownUserError(DermError):
    """A query names a user id the dataset's users table does not have (the service answers 404)."""

    def __init__(self, user_id: int, message: str) -> None:
        self.user_id = int(user_id)
        super().__init__(message)
