"""Review finding: a site's int8 scale that overflows the parameter's dtype is refused."""

import numpy as np
import pytest

from fedcare.core.int8 import SCALE_PREFIX, dequantise, quantise
from fedcare.core.weights import Weights


def test_an_int8_scale_that_overflows_the_parameters_dtype_is_refused():
    start = Weights({"w": np.zeros(4, np.float32)})
    sent = dict(quantise({"w": np.ones(4, np.float32)}, start))
    sent[SCALE_PREFIX + "w"] = np.array(1e300)  # finite, but 127 * 1e300 is inf in float32
    with pytest.raises(ValueError, match="'w'"):
        dequantise(sent, start)
