"""A real-world-shaped impressions log for the own-log tests (issue 17), written as CSV files.

Two years long, dense for the first `dense_weeks` weeks, then a handful of rows in a few scattered weeks; string
user and item ids; `pos` (1-based slot) and `surface` (text) columns; users.csv and items.csv that miss some ids.
Planted structure: users and items fall in 4 taste groups, and a user clicks an item of their own group far more
often (0.5 vs 0.05), and the top slot more than lower ones, so trained models beat chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

START = 1_546_300_800  # 2019-01-01 00:00 UTC, a Tuesday (day 17897)
WEEK = 7 * 86400


def write_ownlog(
    d: Path,
    n_users: int = 80,
    n_items: int = 60,
    dense_weeks: int = 6,
    rows_per_week: int = 700,
    sparse_weeks: tuple[int, ...] = (20, 55, 100),
    rows_per_sparse_week: int = 3,
    missing_users: int = 5,
    missing_items: int = 4,
    seed: int = 0,
) -> dict[str, Path]:
    """Write log.csv, users.csv, items.csv into `d`; returns their paths."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    ugroup = np.arange(n_users) % 4
    igroup = np.arange(n_items) % 4
    surfaces = np.array(["feed", "search", "related"])
    lines = ["uid,item,when,clicked,pos,surface"]
    weeks = [(w, rows_per_week) for w in range(dense_weeks)] + [
        (w, rows_per_sparse_week) for w in sparse_weeks
    ]
    for w, n in weeks:
        u = rng.integers(0, n_users, n)
        i = rng.integers(0, n_items, n)
        pos = rng.integers(1, 6, n)
        surf = rng.choice(3, n, p=[0.6, 0.3, 0.1])
        p = np.where(ugroup[u] == igroup[i], 0.5, 0.05) * (1.2 - 0.1 * pos)
        click = (rng.random(n) < p).astype(int)
        ts = START + w * WEEK + rng.integers(0, WEEK, n)
        for r in range(n):
            lines.append(f"u{u[r]:03d},ad-{i[r]:02d},{ts[r]},{click[r]},{pos[r]},{surfaces[surf[r]]}")
    paths = {"log": d / "log.csv", "users": d / "users.csv", "items": d / "items.csv"}
    paths["log"].write_text("\n".join(lines) + "\n")
    countries = np.array(["FR", "DE", "US"])
    paths["users"].write_text(
        "uid,age,country\n"
        + "".join(f"u{x:03d},{20 + x % 30},{countries[x % 3]}\n" for x in range(missing_users, n_users))
    )
    paths["items"].write_text(
        "item,price,brand\n"
        + "".join(f"ad-{x:02d},{1.0 + x % 7},b{x % 5}\n" for x in range(missing_items, n_items))
    )
    return paths
