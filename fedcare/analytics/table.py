"""One site's table of named numeric columns: what every clinical analysis reads at a site.

Columns are float64, NaN for a missing value. Asking for a column the site lacks, or reading a
text value where a number belongs, fails naming the site and the column, so the server's
admin sees which hospital's data needs fixing, not a shape mismatch later.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: Cells read as missing values (besides the empty cell).
MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none", "?", "."})


class DataError(ValueError):
    """A site's data cannot serve an analysis: a missing column, a non-numeric value."""


class SiteTable:
    """Named columns of one site's rows.

    Args:
        site_id: The site, named in every error.
        columns: Column name -> values (one value per row; NaN = missing).
    """

    def __init__(self, site_id: str, columns: Mapping[str, np.ndarray]) -> None:
        self.site_id = site_id
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"site {site_id}: columns differ in length: {lengths}")
        self._columns = {name: np.asarray(values, np.float64) for name, values in
                         columns.items()}
        self.num_rows = next(iter(lengths.values()), 0)

    @property
    def names(self) -> list[str]:
        return list(self._columns)

    def column(self, name: str) -> np.ndarray:
        """One column's values (NaN = missing)."""
        if name not in self._columns:
            # few names: the reason travels in one bounded line, with other sites' reasons
            close = sorted(self._columns, key=lambda c: (c.lower()[:1] != name.lower()[:1], c))
            shown = ", ".join(close[:6]) + (", ..." if len(close) > 6 else "")
            raise DataError(f"site {self.site_id}: no column {name!r} (it has "
                            f"{len(self._columns)}: {shown})")
        return self._columns[name]

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """The named columns as ``[rows, len(names)]``."""
        if not names:
            return np.zeros((self.num_rows, 0))
        return np.stack([self.column(n) for n in names], axis=1)

    @classmethod
    def from_csv(cls, site_id: str, path: Path) -> SiteTable:
        """A CSV file with a header row; empty cells and :data:`MISSING_TOKENS` are missing.

        Raises:
            DataError: the file is missing or empty, a row has the wrong number of cells, or
                a cell is text that is no number (naming its column and line).
        """
        if not path.is_file():
            raise DataError(f"site {site_id}: data file {path} not found")
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            raise DataError(f"site {site_id}: {path.name} is empty")
        header, body = rows[0], rows[1:]
        values: list[list[float]] = [[] for _ in header]
        for lineno, row in enumerate(body, start=2):
            if len(row) != len(header):
                raise DataError(f"site {site_id}: {path.name} line {lineno} has {len(row)} "
                                f"cells, the header {len(header)}")
            for j, cell in enumerate(row):
                values[j].append(parse_cell(cell, site_id, header[j], lineno))
        return cls(site_id, {name: np.asarray(v) for name, v in zip(header, values,
                                                                        strict=True)})


def parse_cell(cell: str, site_id: str, column: str, lineno: int) -> float:
    """A cell as a number, NaN when it is a missing-value token."""
    text = cell.strip()
    if text.lower() in MISSING_TOKENS:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"site {site_id}: column {column!r} line {lineno} holds {text[:40]!r}, "
                        "not a number") from None


def names_of(config_value: object, what: str) -> list[str]:
    """A task setting naming columns (comma-separated; a task's settings are scalars)."""
    if not isinstance(config_value, str):
        raise DataError(f"{what} must be comma-separated column names, got {config_value!r}")
    return [n for n in (part.strip() for part in config_value.split(",")) if n]


def join_names(names: Sequence[str], what: str) -> str:
    """Column names as one task setting; a name holding a comma cannot travel."""
    bad = [n for n in names if "," in n or not n.strip()]
    if bad:
        raise DataError(f"{what}: column names must be non-empty and free of commas, got {bad}")
    return ",".join(names)


def group_label(group: str | None, code: float) -> str:
    """How a group of a numeric grouping column is named in results: ``stage=2``."""
    if not group:
        return "all"
    return f"{group}={int(code) if float(code).is_integer() else code}"
