"""Secure aggregation's parts: Shamir sharing, key agreement, share encryption, masks that
cancel, fixed-point encoding within its bound, the neighbour graph, the streamed modular sum."""

import itertools

import numpy as np
import pytest

from fedcare.algorithms.secagg import MaskedSumAggregator
from fedcare.core.message import TrainResult
from fedcare.core.secagg import crypto, shamir
from fedcare.core.secagg.fixedpoint import FixedPoint
from fedcare.core.secagg.graph import neighbours, share_holders
from fedcare.core.secagg.masks import add_masks, pair_seed, remove_masks
from fedcare.core.weights import TensorSpec, Weights

SECRET = bytes(range(32))


def test_shamir_rebuilds_from_any_t_shares_and_refuses_t_minus_1():
    shares = shamir.split(SECRET, [1, 2, 3, 4, 5], threshold=3)
    assert len(shares) == 5 and all(len(s) == shamir.SHARE_BYTES for s in shares.values())
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine({x: shares[x] for x in subset}, 3) == SECRET
    assert shamir.combine(shares, 3) == SECRET  # more than t: the same secret
    with pytest.raises(ValueError, match="2 share"):
        shamir.combine({1: shares[1], 2: shares[2]}, 3)
    # t - 1 shares interpolated as if they were enough give a random field element, not the
    # secret (above 2**256 but with probability 2**-265, so it is refused as such)
    with pytest.raises(ValueError, match="share is wrong"):
        shamir.combine({1: shares[1], 4: shares[4]}, 2)


def test_shamir_t_minus_1_shares_are_consistent_with_every_secret():
    # the secrecy argument: for t - 1 shares and ANY candidate secret there is a polynomial
    # of degree t - 1 through them; here, t = 2: one share, and the line through (0, s), (x, y)
    shares = shamir.split(SECRET, [1, 2, 3], threshold=2)
    other = bytes(32)
    y1 = int.from_bytes(shares[1], "big")
    slope = (y1 - int.from_bytes(other, "big")) % shamir.PRIME
    forged = {1: shares[1], 3: ((int.from_bytes(other, "big") + 3 * slope)
                                % shamir.PRIME).to_bytes(66, "big")}
    assert shamir.combine(forged, 2) == other


def test_shamir_detects_a_wrong_share_and_bad_arguments():
    shares = shamir.split(SECRET, [1, 2, 3], threshold=2)
    bad = {1: shares[1], 2: bytes(65) + b"\x01"}
    with pytest.raises(ValueError, match="share is wrong"):
        shamir.combine(bad, 2)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(SECRET, [1, 2], threshold=3)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(SECRET, [1, 1, 2], threshold=2)
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(b"short", [1, 2], threshold=2)


def test_agreement_is_symmetric_and_bound_to_session_pair_and_purpose():
    a, b, c = crypto.new_private_key(), crypto.new_private_key(), crypto.new_private_key()
    pa, pb, pc = (crypto.public_key(k) for k in (a, b, c))
    k_ab = crypto.agree(a, pb, "mask", "s1", ("A", "B"))
    assert k_ab == crypto.agree(b, pa, "mask", "s1", ("B", "A"))
    assert k_ab != crypto.agree(a, pb, "mask", "s2", ("A", "B"))
    assert k_ab != crypto.agree(a, pb, "share", "s1", ("A", "B"))
    assert k_ab != crypto.agree(a, pc, "mask", "s1", ("A", "C"))


def test_sealed_shares_cannot_be_swapped_or_changed():
    key = bytes(32)
    sealed = crypto.seal(key, b"share", b"s|A|B")
    assert len(sealed) == len(b"share") + crypto.SEAL_OVERHEAD
    assert crypto.unseal(key, sealed, b"s|A|B") == b"share"
    with pytest.raises(ValueError, match="authentication"):
        crypto.unseal(key, sealed, b"s|C|B")  # relayed to another recipient
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(ValueError, match="authentication"):
        crypto.unseal(key, bytes(tampered), b"s|A|B")


def test_masks_expand_blockwise_the_same_however_the_model_is_cut():
    seed = b"\x07" * 32
    whole = [np.zeros(600_000, np.uint32)]
    parts = [np.zeros(5, np.uint32), np.zeros(599_995, np.uint32)]
    crypto.apply_mask(whole, seed)
    crypto.apply_mask(parts, seed)
    np.testing.assert_array_equal(whole[0], np.concatenate(parts))
    assert len(np.unique(whole[0][:1000])) == 1000  # not a constant


def _sites(names):
    keys = {s: crypto.new_private_key() for s in names}
    return keys, {s: crypto.public_key(k) for s, k in keys.items()}


def test_pair_masks_cancel_in_the_sum_and_dropped_pairs_are_removed():
    names = ["a", "b", "c", "d"]
    private, public = _sites(names)
    values = {s: np.arange(1000, dtype=np.uint32) * (i + 1) for i, s in enumerate(names)}
    self_seeds = {s: bytes([i + 1]) * 32 for i, s in enumerate(names)}
    masked = {}
    for s in names:
        target = [values[s].copy()]
        pairs = [(o, pair_seed(private[s], public[o], "sess", s, o)) for o in names if o != s]
        add_masks(target, s, self_seeds[s], pairs)
        assert (target[0] != values[s]).all()
        masked[s] = target[0]
    # d masked (so a, b, c masked with it) but its upload never arrived
    summed = ["a", "b", "c"]
    total = [np.sum([masked[s] for s in summed], axis=0, dtype=np.uint64).astype(np.uint32)]
    dropped = [(s, "d", pair_seed(private["d"], public[s], "sess", "d", s)) for s in summed]
    remove_masks(total, [self_seeds[s] for s in summed], dropped)
    expect = np.sum([values[s] for s in summed], axis=0, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(total[0], expect)


def test_fixed_point_is_within_its_bound_and_clips():
    rng = np.random.default_rng(0)
    encoding = FixedPoint(clip=0.5, num_sites=3)
    updates = [rng.uniform(-0.6, 0.6, 10_000) for _ in range(3)]
    weights = [0.2, 0.3, 0.5]
    total = np.zeros(10_000, np.uint32)
    clipped = 0
    for update, w in zip(updates, weights, strict=True):
        out = np.empty(10_000, np.uint32)
        clipped += encoding.encode(update, w, out)
        total += out
    exact = sum(w * np.clip(u, -0.5, 0.5) for u, w in zip(updates, weights, strict=True))
    decoded = encoding.decode(total, 1.0)
    bound = encoding.error_bound(3, 1.0)
    assert np.abs(decoded - exact).max() <= bound
    assert bound < 1e-9
    assert clipped == sum(int((np.abs(u) > 0.5).sum()) for u in updates) > 0
    # the extremes of the range do not wrap around
    out = np.empty(2, np.uint32)
    extremes = np.zeros(2, np.uint32)
    for _ in range(3):
        encoding.encode(np.array([1e9, -1e9]), 1 / 3, out)
        extremes += out
    np.testing.assert_allclose(encoding.decode(extremes, 1.0), [0.5, -0.5], atol=bound)
    with pytest.raises(ValueError, match="weight"):
        encoding.encode(np.zeros(2), 1.5, out)
    with pytest.raises(ValueError, match="clip"):
        FixedPoint(clip=0, num_sites=3)


def test_the_secagg_plus_graph_is_regular_symmetric_and_connected():
    sites = [f"s{i:02d}" for i in range(30)]
    graph = neighbours(sites, 6)
    assert all(len(v) == 6 for v in graph.values())
    assert all(s in graph[o] for s in sites for o in graph[s])
    seen, frontier = {"s00"}, ["s00"]
    while frontier:
        for o in graph[frontier.pop()]:
            if o not in seen:
                seen.add(o)
                frontier.append(o)
    assert seen == set(sites)
    assert share_holders(graph, "s03") == sorted(["s03", *graph["s03"]])
    assert neighbours(sites[:5], None)["s00"] == sites[1:5]
    assert neighbours(sites[:5], 6)["s00"] == sites[1:5]  # degree >= n - 1: complete


def test_the_modular_sum_streams_and_takes_a_discarded_upload_back_out_exactly():
    specs = [TensorSpec("w", "<f4", (3, 4)), TensorSpec("b", "<f4", (5,))]
    agg = MaskedSumAggregator(specs)
    rng = np.random.default_rng(1)
    first = {n: rng.integers(0, 2**32, s.shape, dtype=np.uint32) for n, s in
             zip(["w", "b"], specs, strict=True)}
    agg.add("site-0", TrainResult(Weights(first), 1))
    before = [t.copy() for t in agg.sums]
    stream = agg.stream("site-1", 1, agg.specs)
    stream.write(0, 0, np.full(12, 2**32 - 1, np.uint32))
    stream.write(1, 2, np.full(3, 7, np.uint32))
    stream.discard()
    for was, now in zip(before, agg.sums, strict=True):
        np.testing.assert_array_equal(was, now)
    stream = agg.stream("site-2", 1, agg.specs)
    stream.write(0, 0, np.ones(12, np.uint32))
    stream.write(1, 0, np.ones(5, np.uint32))
    stream.commit()
    assert agg.sites == ["site-0", "site-2"]
    np.testing.assert_array_equal(agg.finish()["w"], first["w"] + np.uint32(1))
    with pytest.raises(ValueError, match="uint32"):
        agg.stream("site-3", 1, agg.specs).write(0, 0, np.ones(12, np.float32))
    with pytest.raises(ValueError, match="uint32"):
        MaskedSumAggregator(specs).add("x", TrainResult(Weights(
            {"w": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}), 1))


def _three_sites_masked():
    """Three site halves taken through steps 1-3 by hand, as the server would relay them."""
    from fedcare.core import advert
    from fedcare.core.message import Task
    from fedcare.core.secagg import protocol as p
    from fedcare.sim.identity import ThrowawayIdentities
    from fedcare.site.secagg import SecureAggregationSite

    names = ["a", "b", "c"]
    start = Weights({"w": np.zeros(4, np.float32)})
    identities = ThrowawayIdentities(names)
    sites = {s: SecureAggregationSite(s, identities.identity(s)) for s in names}
    keys, adverts = {}, {}
    for s in names:
        task = Task(f"{s}1", "j", 1, p.TRAIN, start, {p.SESSION: "j/r1"})
        reply = sites[s].advertise(task, TrainResult(Weights({"w": np.full(4, 0.5,
                                                                           np.float32)}), 10))
        keys[s] = np.stack([reply.weights[p.MASK_KEY], reply.weights[p.SHARE_KEY]])
        adverts[s] = reply.weights[p.ADVERT].tobytes()
    sealed = {}
    for s in names:
        others = [o for o in names if o != s]
        config = {p.SESSION: "j/r1", p.SITES: p.as_setting(names),
                  p.NEIGHBOURS: p.as_setting(others), p.THRESHOLD: 2, p.WEIGHT: 1 / 3,
                  p.CLIP: 1.0}
        data, lengths = advert.pack([adverts[o] for o in others])
        rows = sites[s].share(Task(f"{s}2", "j", 1, p.SHARE, Weights(
            {p.PEER_KEYS: np.stack([keys[o] for o in others]), p.PEER_ADVERTS: data,
             p.PEER_ADVERT_LENGTHS: lengths}), config)).values[p.SHARES]
        sealed.update({(s, o): row for o, row in zip(others, rows, strict=True)})
    for s in ["a", "b"]:  # c never uploads
        others = [o for o in names if o != s]
        sites[s].masked(Task(f"{s}3", "j", 1, p.MASKED, Weights(
            {p.SHARES: np.stack([sealed[(o, s)] for o in others])}),
            {p.SESSION: "j/r1", p.SENDERS: p.as_setting(others)}))
    return sites, p, Task


@pytest.mark.parametrize(("survivors", "dropped", "message"), [
    (["a", "b"], ["b", "c"], "both summed and dropped"),
    (["b"], ["a", "c"], "not among the summed sites"),
])
def test_a_site_refuses_an_unmasking_that_would_reveal_an_update(survivors, dropped, message):
    sites, p, Task = _three_sites_masked()
    config = {p.SESSION: "j/r1", p.SURVIVORS: p.as_setting(survivors),
              p.DROPPED: p.as_setting(dropped)}
    with pytest.raises(ValueError, match=message):
        sites["a"].unmask(Task("a4", "j", 1, p.UNMASK, None, config))


def test_a_site_refuses_unmasking_with_fewer_than_t_survivors_or_another_session():
    sites, p, Task = _three_sites_masked()
    sites["a"]._round.threshold = 3  # as if t were 3
    config = {p.SESSION: "j/r1", p.SURVIVORS: p.as_setting(["a", "b"]),
              p.DROPPED: p.as_setting(["c"])}
    with pytest.raises(ValueError, match="fewer than t=3"):
        sites["a"].unmask(Task("a4", "j", 1, p.UNMASK, None, config))
    with pytest.raises(ValueError, match="no round in progress"):
        sites["b"].unmask(Task("b4", "j", 1, p.UNMASK, None, {**config, p.SESSION: "j/r2"}))
    reply = sites["b"].unmask(Task("b4", "j", 1, p.UNMASK, None, config))
    # b reveals the self-mask seed shares of a and b, and the masking key share of c only
    assert reply.values[p.SELF_SEED_SHARES].shape == (2, shamir.SHARE_BYTES)
    assert reply.values[p.MASK_KEY_SHARES].shape == (1, shamir.SHARE_BYTES)
