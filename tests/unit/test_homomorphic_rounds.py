"""Homomorphic (CKKS) aggregation in the simulator: FedAvg's model within CKKS precision, a
server that holds only the public context and cannot decrypt, and the refusals."""

import numpy as np
import pytest
import toyjob

pytest.importorskip("tenseal")

from fedcare import AggregationError, ConfigError, FedAvg, Job, simulate
from fedcare.algorithms import Krum
from fedcare.core import he_protocol as p
from fedcare.core.ckks import CkksKeys, pack, unpack
from fedcare.core.message import StatsResult
from fedcare.core.weights import Weights
from fedcare.server.workflows import HomomorphicAggregation
from fedcare.site.he import HomomorphicSite

INITIAL = toyjob.secure_initial()


def _he_job(num_sites=4, num_rounds=1, workflow=None, modes=None, num_values=5000):
    modes = modes or {}
    workflow = workflow or HomomorphicAggregation()

    def trainer(ctx):
        return toyjob.SecureToyTrainer(ctx.site_index, modes.get(ctx.site_id, "ok"))

    return Job(name="he", initial_weights=lambda: toyjob.secure_initial(num_values),
               trainer=trainer, strategy=FedAvg(), num_rounds=num_rounds, min_sites=2,
               round_timeout_s=30.0, evaluate_every=0,
               site_ids=tuple(f"site-{i}" for i in range(num_sites)), workflows=(workflow,))


def _plain(num_sites, num_rounds=1):
    return simulate(Job(name="plain", initial_weights=toyjob.secure_initial,
                        trainer=lambda c: toyjob.SecureToyTrainer(c.site_index),
                        strategy=FedAvg(), num_rounds=num_rounds, evaluate_every=0,
                        site_ids=tuple(f"site-{i}" for i in range(num_sites))))


def test_a_homomorphic_round_gives_fedavgs_model_within_ckks_precision():
    workflow = HomomorphicAggregation(decryptors=2)
    result = simulate(_he_job(num_sites=4, num_rounds=2, workflow=workflow))
    assert result.summary == "finished with 4 of 4 sites"
    assert not result.failures
    plain = _plain(4, num_rounds=2)
    moved = 0.0
    for name in INITIAL:
        got = np.asarray(result.weights[name], np.float64)
        diff = np.abs(got - np.asarray(plain.weights[name], np.float64))
        assert diff.max() < 1e-4, name
        moved = max(moved, float(np.abs(got - INITIAL[name]).max()))
    assert moved > 0.05  # the rounds did move the model
    # round 1 equals the float64 FedAvg of the four sites' updates
    one = simulate(_he_job(num_sites=4))
    expected = toyjob.secure_fedavg(range(4), INITIAL)
    for name, value in expected.items():
        assert np.abs(np.asarray(one.weights[name], np.float64) - value).max() < 1e-5


def test_the_server_holds_only_a_public_context_and_cannot_decrypt_an_upload(monkeypatch):
    seen = {}
    original = CkksKeys.add

    def spy(self, total, chunks):
        seen.setdefault("uploads", []).append(list(chunks))
        seen["keys"] = self
        return original(self, total, chunks)

    monkeypatch.setattr(CkksKeys, "add", spy)
    workflow = HomomorphicAggregation()
    simulate(_he_job(num_sites=3, workflow=workflow))
    server = workflow.public_keys
    assert server is not None and seen["keys"] is server
    assert server.is_private is False
    assert server._context.is_private() is False
    assert len(seen["uploads"]) == 3
    with pytest.raises(ValueError, match="holds no secret key"):
        server.decrypt(seen["uploads"][0])
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        import tenseal

        tenseal.ckks_vector_from(server._context, seen["uploads"][0][0]).decrypt()
    with pytest.raises(ValueError, match="holds no secret key"):
        server.secret_bytes()
    # the upload's bytes are not the update's plaintext
    update = toyjob.secure_update(0, INITIAL)
    raw = np.concatenate([np.asarray(update[n], np.float64).ravel() for n in INITIAL])
    assert raw.tobytes()[:64] not in b"".join(seen["uploads"][0])


def test_a_site_that_fails_before_encrypting_is_left_out():
    result = simulate(_he_job(num_sites=4, modes={"site-2": "fail_at_he_encrypt"}))
    kept = [0, 1, 3]
    expected = toyjob.secure_fedavg(kept, INITIAL)
    for name, value in expected.items():
        assert np.abs(np.asarray(result.weights[name], np.float64) - value).max() < 1e-5
    assert [(f.site_id, f.kind) for f in result.failures] == [("site-2", p.ENCRYPT)]
    assert result.history.rounds[-1].trained_sites == ["site-0", "site-1", "site-3"]


def test_decryptors_that_disagree_fail_the_round(monkeypatch):
    original = HomomorphicSite.decrypt

    def lying(self, task):
        result = original(self, task)
        if self.site_id == "site-1":
            mean = np.array(result.values[p.MEAN])
            mean[0] += 1e-3
            return StatsResult(Weights({p.MEAN: mean}), 1)
        return result

    monkeypatch.setattr(HomomorphicSite, "decrypt", lying)
    with pytest.raises(AggregationError, match="site-0 and site-1 disagree"):
        simulate(_he_job(num_sites=3, workflow=HomomorphicAggregation(decryptors=2)))


def test_a_context_with_its_secret_key_is_refused_by_the_server(monkeypatch):
    monkeypatch.setattr(CkksKeys, "public_bytes", CkksKeys.secret_bytes)
    with pytest.raises(AggregationError, match="sent a context with its secret key; refused"):
        simulate(_he_job(num_sites=2))


def test_ckks_sums_chunks_and_packing_round_trips():
    keys = CkksKeys.generate(8192, 40, (60, 40, 60))
    public = CkksKeys.load(keys.public_bytes())
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 50, 9000), rng.normal(0, 50, 9000)
    total = public.add(public.add(None, keys.encrypt(a)), keys.encrypt(b))
    assert len(total) == 3  # 4096 values a ciphertext
    chunks = unpack(*pack(public.serialize(total)))
    assert np.abs(keys.decrypt(chunks)[:9000] - (a + b)).max() < 1e-4
    with pytest.raises(ValueError, match="expected 3"):
        public.add(total, chunks[:2])
    with pytest.raises(ValueError, match="malformed ciphertext tensors"):
        unpack(np.zeros(10, np.uint8), np.array([4, 4], np.int64))


def test_misconfiguration_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"poly_modulus_degree must be one of \[4096, 8192, "
                                          r"16384, 32768\], got 1000$"):
        HomomorphicAggregation(poly_modulus_degree=1000)
    with pytest.raises(ConfigError, match="scale_bits must be an integer in"):
        HomomorphicAggregation(scale_bits=10)
    with pytest.raises(ConfigError, match="add up to 240 bits, more than the 218"):
        HomomorphicAggregation(coeff_mod_bit_sizes=(60, 60, 60, 60))
    with pytest.raises(ConfigError, match="must exceed scale_bits=40"):
        HomomorphicAggregation(coeff_mod_bit_sizes=(40, 40, 60))
    with pytest.raises(ConfigError, match="decryptors must be an integer >= 1"):
        HomomorphicAggregation(decryptors=0)
    with pytest.raises(ConfigError, match="decryptors=5 exceeds the job's 4 sites"):
        _he_job(num_sites=4, workflow=HomomorphicAggregation(decryptors=5))
    with pytest.raises(ConfigError, match="Krum aggregates otherwise"):
        Job(name="k", initial_weights=toyjob.secure_initial, trainer=toyjob.trainer_for,
            strategy=Krum(num_byzantine=0), num_rounds=1,
            workflows=(HomomorphicAggregation(),))


def test_sums_beyond_the_contexts_headroom_are_refused_before_anything_is_encrypted():
    # the default one-data-prime context holds sums below 2**(60 - 40 - 1)
    assert CkksKeys.generate().largest_sum == 2.0**19
    assert CkksKeys.generate(8192, 40, (60, 40, 60)).largest_sum == 2.0**59
    # 2**(30 - 25 - 1) = 16: the toy sites' samples x update (up to about 40 x 0.4) do not fit
    small = HomomorphicAggregation(scale_bits=25, coeff_mod_bit_sizes=(30, 30))
    with pytest.raises(AggregationError) as info:
        simulate(_he_job(workflow=small))
    assert "summed over 4 sites could exceed what the CKKS context holds (|sum| < 16)" in str(
        info.value)
    assert "coeff_mod_bit_sizes=(60, 40, 60)" in str(info.value)
