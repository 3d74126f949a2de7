import numpy as np
import pytest
import torch
from torch import nn

from fedcare import Weights
from fedcare.pytorch import (
    get_weights,
    set_weights,
    state_dict_from_weights,
    weights_from_state_dict,
)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))


def test_state_dict_round_trip_keeps_names_order_dtypes_and_values():
    m = model()
    m(torch.randn(8, 4))  # updates batch-norm running stats and the int64 counter
    sd = m.state_dict()
    w = weights_from_state_dict(sd)
    assert list(w) == list(sd)
    assert w["1.num_batches_tracked"].dtype == np.int64
    back = state_dict_from_weights(w)
    for name, tensor in sd.items():
        assert back[name].dtype == tensor.dtype
        assert torch.equal(back[name], tensor)
    m2 = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    set_weights(m2, w)
    assert get_weights(m2).allclose(w)


def test_weights_do_not_alias_the_model():
    m = model()
    w = get_weights(m)
    with torch.no_grad():
        m[0].weight.add_(1.0)
    assert not np.allclose(w["0.weight"], m[0].weight.detach().numpy())
    tensors = state_dict_from_weights(w)
    tensors["0.weight"].add_(1.0)  # writable, and the Weights stay untouched
    assert not np.allclose(w["0.weight"], tensors["0.weight"].numpy())


def test_set_weights_names_the_mismatch():
    m = model()
    w = dict(get_weights(m))
    w["0.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"0\.weight: shape \[2, 2\], expected \[3, 4\]"):
        set_weights(m, Weights(w))


def test_bfloat16_is_refused_clearly():
    with pytest.raises(TypeError, match="bfloat16"):
        weights_from_state_dict({"x": torch.zeros(2, dtype=torch.bfloat16)})
