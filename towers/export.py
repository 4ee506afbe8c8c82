"""The export side of a tower snapshot: only the towers an inference needs (torchrec's model / train task /
export split).

`towers.train.load_snapshot` builds what training resumes from: both entity towers, the interaction tower, the
training task with its logQ estimator and the optimiser. Embedding users needs the user tower alone and
embedding ads the Pin tower alone, so the daily export reads the snapshot through `load_towers(dir, entities)`:
the manifest is validated first (as for every artifact, its checksum reading the file once per process), then
only the requested towers are built and only their tensors are taken from `weights.pt` (memory-mapped, so the
other tower's and the interaction tower's tensors are not materialised). `Snapshot.towers` gives the same view
of a snapshot at hand (training, benchmarks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dermcore.artifact import read_manifest
from dermcore.errors import DataError, DermError
from dermfeatures.spec import FeatureSpec
from towers.config import TowerConfig
from towers.model import EntityTower

MODEL_KIND = "tower_model"
MODEL_SCHEMA_VERSION = 1
#: the state_dict prefix of each entity's tower in `DermModel` (user tower, Pin tower)
TOWER_PREFIX = {"user": "user_tower.", "ad": "pin_tower."}


@dataclass
class Towers:
    """The exported towers of one snapshot: `user` (the user tower) and `ad` (the Pin tower), each None when
    not loaded, with the snapshot's config, feature spec, manifest and directory (None while training)."""

    config: TowerConfig
    spec: FeatureSpec
    manifest: dict[str, Any]
    path: Path | None
    user: EntityTower | None = None
    ad: EntityTower | None = None

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    def tower(self, entity: str) -> EntityTower:
        """The tower of `entity` ("user" | "ad"); DermError when this export did not load it."""
        t = {"user": self.user, "ad": self.ad}.get(entity)
        if t is None:
            raise DermError(
                f"{self.path}: the {entity} tower was not loaded (load_towers(..., ({entity!r},)))"
            )
        return t


def load_towers(
    directory: Path, entities: Iterable[str] = ("user", "ad"), device: torch.device | str = "cpu"
) -> Towers:
    """The towers of `entities` ("user", "ad"; none: the manifest, config and spec only) of the snapshot in
    `directory`, in eval mode on `device`; the manifest (and its payload checksums) is validated before the
    weights are read. Neither a tower not asked for nor the interaction tower is built, and no training state
    is read."""
    directory = Path(directory)
    want = tuple(dict.fromkeys(entities))
    unknown = [e for e in want if e not in TOWER_PREFIX]
    if unknown:
        raise DermError(f"towers to load: {sorted(TOWER_PREFIX)}, got {list(want)}")
    m = read_manifest(directory, MODEL_KIND, MODEL_SCHEMA_VERSION)
    cfg = TowerConfig.from_json(m["config"])
    spec = FeatureSpec.from_json(m["feature_spec"])
    out = Towers(cfg, spec, m, directory)
    if not want:
        return out
    try:
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True, mmap=True)
        for entity in want:
            prefix = TOWER_PREFIX[entity]
            tower = EntityTower(spec, entity, cfg)
            tower.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
            setattr(out, entity, tower.to(torch.device(device)).eval())
    except (FileNotFoundError, RuntimeError, KeyError) as e:
        raise DataError(directory, f"unreadable model snapshot ({str(e).splitlines()[0]})") from None
    return out
