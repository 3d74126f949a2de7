"""Fed-TCGA-BRCA data, the Cox loss and the C-index, against hand computations."""

import hashlib
import math

import numpy as np
import pytest
import torch

from fedcare.datasets import tcga_brca
from fedcare.jobs.tcga import c_index, cox_loss

SHA256 = {
    "brca.csv": "07cb53423f7d579d33cfdbf2cba57b2aee75318b85866c68ce39a75b1f1ba020",
    "centers.csv": "d610df2dae0203ea229c9579747ed3eb8d28e137c5378f55acc6fe6b4632bb1d",
    "train_test_split.csv": "1249c6543a4060ff0fdaf8510fc37017755836db6c9fc5e6af96057c36510990",
}


def test_files_are_the_published_bytes():
    for name, digest in SHA256.items():
        data = (tcga_brca._DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name


def test_centres_match_flamby_counts():
    data = tcga_brca.load_all()
    sizes = {c: (len(d.x_train), len(d.x_test)) for c, d in data.items()}
    assert sizes == {"northeast": (248, 63), "south": (156, 40), "west": (164, 42),
                     "midwest": (129, 33), "europe": (129, 33), "canada": (40, 11)}
    events = {c: int(d.e_train.sum() + d.e_test.sum()) for c, d in data.items()}
    assert events == {"northeast": 59, "south": 39, "west": 22, "midwest": 19, "europe": 9,
                      "canada": 3}
    assert all(d.x_train.shape[1] == 39 for d in data.values())
    with pytest.raises(ValueError, match="unknown TCGA-BRCA centre 'mars'"):
        tcga_brca.load_center("mars")


def test_c_index_by_hand():
    # times 1, 2, 3, 4 ; deaths at 1 and 3 ; comparable pairs (earlier = death):
    # (1,2) (1,3) (1,4) (3,4) -> risks 4>3, 4>2, 4>1 concordant; 2<1? risk3=2 > risk4=1 yes
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([1.0, 0.0, 1.0, 0.0])
    assert c_index(np.array([4.0, 3.0, 2.0, 1.0]), e, t) == 1.0
    assert c_index(np.array([1.0, 2.0, 3.0, 4.0]), e, t) == 0.0
    # one tie among the 4 pairs counts 1/2: risks (4, 4, 2, 1): pair (1,2) tied
    assert c_index(np.array([4.0, 4.0, 2.0, 1.0]), e, t) == pytest.approx(3.5 / 4)
    assert math.isnan(c_index(np.array([1.0, 2.0]), np.zeros(2), np.array([1.0, 2.0])))


def test_cox_loss_by_hand():
    # two patients, death of the first at t=1, second censored later: risk set {1, 2}
    risk = torch.tensor([0.5, -0.5])
    loss = cox_loss(risk, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0]))
    expected = -(0.5 - math.log(math.exp(0.5) + math.exp(-0.5)))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(cox_loss(risk, torch.zeros(2), torch.tensor([1.0, 2.0]))) == 0.0
