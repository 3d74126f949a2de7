"""Review finding: in one cohort pass-2 reply, the count of a histogram bin suppressed by
``min_rows`` is the group's count minus the bins that were sent."""

import numpy as np

from fedcare.analytics.cohort import site_summary
from fedcare.analytics.table import SiteTable


def test_a_suppressed_bin_count_cannot_be_read_off_one_reply():
    age = np.concatenate([np.linspace(40, 80, 19), [97.0]])  # one patient over 95
    table = SiteTable("s", {"age": age})
    config = {"name": "cohort", "columns": "age", "min_rows": 5, "bins": 1}
    first = site_summary(table, config)
    # the server picks the range: everyone below 95 in the one inner bin, the rest overflow
    model = {"groups": first.values["groups"], "means": np.array([[60.0]]),
             "lows": np.array([-1e9]), "highs": np.array([95.0])}
    second = site_summary(table, config, model)
    hist = second.values["histogram"][0, 0]
    hidden = second.values["count"][0, 0] - hist.sum()
    assert not 0 < hidden < 5, f"{hidden:g} patient(s) over 95, below min_rows 5, read off"


def test_the_next_smallest_bin_is_suppressed_until_the_hidden_ones_hold_min_rows():
    age = np.concatenate([np.linspace(40, 80, 10), [97.0, 98.0, 99.0, 99.5, 99.7, 99.9]])
    table = SiteTable("s", {"age": age})
    config = {"name": "cohort", "columns": "age", "min_rows": 5, "bins": 2}
    first = site_summary(table, config)
    model = {"groups": first.values["groups"], "means": np.array([[60.0]]),
             "lows": np.array([40.0]), "highs": np.array([95.0])}
    hist = site_summary(table, config, model).values["histogram"][0, 0]
    # none under 40, 7 in 40-67.5, 3 in 67.5-95 (under 5: not sent), 6 over 95: 3 hidden
    # values alone would be read off, so the smallest bin sent (the 6 over 95) goes too
    assert hist.tolist() == [0.0, 7.0, 0.0, 0.0]
