"""Names from data are data, not paths: file names built from columns, tables or pointers, checked or encoded.

Three tools, used wherever a name that came from a file, a header or a pointer becomes part of a path:

- `safe_component(name)`: the name itself when it is a plain file-name component (letters, digits and
  `_ . = + -`, not starting with a dot, at most 100 characters), else a readable slug plus a short sha256 of the
  name, so `../../x` and `/etc/passwd` become ordinary names inside the directory they are written to. The
  encoding is deterministic: the same column always maps to the same file.
- `check_component(name, where)`: the same test as an error, for names that must already be plain (a `LATEST`
  pointer, a version name read back from disk).
- `resolve_under(root, rel)`: `root / rel` only when `rel` is relative, has no `..` component, no component of
  it below `root` is a symbolic link, and the resolved path stays under the resolved `root`. Every write of a
  file whose name was built from data goes through it, and so does every read of a path a manifest names.

Symbolic links inside an artifact are refused rather than followed: a link planted in a dataset or workspace
(say `vocab -> /etc`) would otherwise turn a write inside the artifact into a write anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

from dermcore.errors import DataError

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,99}")
_SLUG_CHAR = re.compile(r"[^A-Za-z0-9_=+-]+")


def is_plain(name: str) -> bool:
    """True when `name` can be used as one file-name component as it is."""
    return isinstance(name, str) and _PLAIN.fullmatch(name) is not None


def safe_component(name: str) -> str:
    """`name` when plain, else `<slug>-<sha256[:12]>` (slug: the name's letters, digits and `_=+-`, at most 40).

    Two different names never share an encoded form in practice (48 bits of sha256); a plain name can never
    look like an encoded one of another name unless it ends in the same 12 hex digits of its hash."""
    if is_plain(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    slug = _SLUG_CHAR.sub("_", name).strip("_")[:40] or "x"
    return f"{slug}-{digest}"


def check_component(name: object, where: str | Path) -> str:
    """`name` when it is a plain file-name component, else a DataError naming `where`."""
    if not isinstance(name, str) or not is_plain(name):
        raise DataError(where, f"{name!r} is not a plain file name (letters, digits, _ . = + - only)")
    return name


def resolve_under(root: str | Path, rel: str | Path, where: str | Path | None = None) -> Path:
    """`root / rel`, refused (DataError naming `where`, default the joined path) when it could leave `root`.

    `rel` must be relative, without `..` or empty components; no existing component from `root` down may be a
    symbolic link; the resolved result must lie under the resolved `root`. The last component may not exist yet
    (the file about to be written)."""
    root = Path(root)
    rel_s = str(rel)
    where = where if where is not None else root / rel_s
    parts = PurePosixPath(rel_s.replace("\\", "/")).parts
    if not rel_s or PurePosixPath(rel_s).is_absolute() or os.path.isabs(rel_s):
        raise DataError(where, f"path {rel_s!r} must be relative to {root}")
    if any(p in ("..", "") for p in parts) or "\x00" in rel_s:
        raise DataError(where, f"path {rel_s!r} leaves {root}")
    path = root
    for p in parts:
        path = path / p
        if path.is_symlink():
            raise DataError(path, "is a symbolic link; derm reads and writes only inside the artifact")
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise DataError(where, f"path {rel_s!r} resolves outside {root}")
    return path


def check_no_symlinks(root: str | Path, path: str | Path) -> Path:
    """`path` (which must lie below `root`) when no existing component of it from `root` down is a symbolic
    link; a DataError naming the link otherwise. Used for layout directories of a workspace."""
    root, path = Path(root), Path(path)
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise DataError(path, f"is not inside {root}") from None
    return resolve_under(root, rel) if rel.parts else root
