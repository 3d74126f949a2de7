"""The tables clinical analyses read at a site: the shipped data sets, or the site's own CSV.

``dataset`` names where a site's rows come from:

- ``heart``: the UCI heart-disease hospital (every row, raw attributes, NaN for ``?``) with
  the label ``disease`` (``num > 0``), and the 13 model features of the heart job
  (complete rows; ``model_row`` 1 marks them);
- ``tcga_brca``: the TCGA-BRCA region's patients (train and test), 39 features, ``event``,
  ``time`` (days) and ``stage`` (1-3 for AJCC stage I-III, 0 otherwise);
- ``csv:FILE``: ``FILE`` in the site's own data folder (a header row; empty cells, ``NA``,
  ``?`` are missing values).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedcare.analytics.table import DataError, SiteTable
from fedcare.datasets import heart, tcga_brca

DATASETS = ("heart", "tcga_brca", "csv:FILE")
#: TCGA-BRCA stage groups, by the code of the ``stage`` column.
STAGES = {0: "other", 1: "stage I", 2: "stage II", 3: "stage III"}
_STAGE_COLUMNS = {"ajcc_pathologic_stage_Stage IA": 1, "ajcc_pathologic_stage_Stage IIA": 2,
                  "ajcc_pathologic_stage_Stage IIB": 2, "ajcc_pathologic_stage_Stage IIIA": 3,
                  "ajcc_pathologic_stage_Stage IIIC": 3}


def tcga_feature_names() -> list[str]:
    """The 39 TCGA-BRCA feature names, commas dropped (a comma cannot name a column here)."""
    return [name.replace(",", "") for name in tcga_brca.feature_names()]


def tcga_table(site_id: str) -> SiteTable:
    d = tcga_brca.load_center(site_id)
    x = np.concatenate([d.x_train, d.x_test]).astype(np.float64)
    names = tcga_feature_names()
    columns = {name: x[:, j] for j, name in enumerate(names)}
    stage = np.zeros(len(x))
    for name, code in _STAGE_COLUMNS.items():
        stage[columns[name] == 1] = code
    columns.update(event=np.concatenate([d.e_train, d.e_test]).astype(np.float64),
                   time=np.concatenate([d.t_train, d.t_test]).astype(np.float64), stage=stage)
    return SiteTable(site_id, columns)


def heart_table(site_id: str, data_dir: Path | None = None) -> SiteTable:
    raw_file = heart.load_raw_file(site_id, data_dir)
    raw, label = raw_file[:, :-1], raw_file[:, -1]
    columns = {name: raw[:, j] for j, name in enumerate(heart.RAW_FEATURES)}
    columns["disease"] = np.where(np.isnan(label), math.nan, (label > 0).astype(np.float64))
    x, _ = heart.load_raw(site_id, data_dir)
    model = np.full((len(raw), x.shape[1]), math.nan)
    complete = ~np.isnan(raw[:, [i for i, n in enumerate(heart.RAW_FEATURES)
                                 if n not in ("slope", "ca", "thal")]]).any(axis=1)
    complete &= ~np.isnan(label)
    model[complete] = x
    for j, name in enumerate(heart.FEATURE_NAMES):
        if name not in columns:
            columns[name] = model[:, j]
    columns["model_row"] = complete.astype(np.float64)
    return SiteTable(site_id, columns)


def load_table(dataset: str, site_id: str, data_dir: Path | None) -> SiteTable:
    """The site's rows of ``dataset`` (see the module docstring)."""
    if dataset == "heart":
        return heart_table(site_id, data_dir)
    if dataset == "tcga_brca":
        return tcga_table(site_id)
    if dataset.startswith("csv:"):
        name = dataset[4:]
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise DataError(f"site {site_id}: dataset {dataset!r}: give a file name in the "
                            "site's data folder")
        if data_dir is None:
            raise DataError(f"site {site_id}: dataset {dataset!r} needs the site's data folder "
                            "(its kit's data_dir, or the simulator's --data-dir)")
        return SiteTable.from_csv(site_id, Path(data_dir) / name)
    raise DataError(f"site {site_id}: unknown dataset {dataset!r}; known: {list(DATASETS)}")
