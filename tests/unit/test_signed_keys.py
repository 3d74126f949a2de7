"""A server that substitutes the public keys it relays gets refusals, never a share or a secret
context sealed under its keys: the real site code, in process, with a server (or a relay)
that swaps one site's keys for its own."""

import numpy as np
import pytest
import toyjob

from fedcare import AggregationError, simulate
from fedcare.core import advert
from fedcare.core import he_protocol as he
from fedcare.core.errors import PrivacyError, UntrustedKey
from fedcare.core.message import Task, TrainResult
from fedcare.core.secagg import crypto
from fedcare.core.secagg import protocol as p
from fedcare.core.weights import Weights
from fedcare.server.events import RunListener
from fedcare.server.workflows import homomorphic, secure
from fedcare.sim.identity import ThrowawayIdentities
from fedcare.site import he as site_he
from fedcare.site import secagg as site_secagg
from fedcare.site.secagg import SecureAggregationSite

NAMES = ["a", "b", "c"]
START = Weights({"w": np.zeros(4, np.float32)})
UPDATE = TrainResult(Weights({"w": np.full(4, 0.5, np.float32)}), 10)


class Failures(RunListener):
    def __init__(self):
        self.seen = []

    def on_failure(self, failure):
        self.seen.append(failure)


@pytest.fixture
def sealed_for(monkeypatch):
    """(sender, recipient) of every share or context a site seals."""
    calls = []

    def spy(key, plaintext, associated):
        calls.append(tuple(associated.decode().split("\x1f")[-2:]))
        return crypto.seal(key, plaintext, associated)

    monkeypatch.setattr(site_secagg, "seal", spy)
    monkeypatch.setattr(site_he, "seal", spy)
    return calls


def _advertised(sites, round_num=1, session="j/r1"):
    keys, adverts = {}, {}
    for s, site in sites.items():
        task = Task(f"{s}1", "j", round_num, p.TRAIN, START, {p.SESSION: session})
        reply = site.advertise(task, UPDATE)
        keys[s] = np.stack([reply.weights[p.MASK_KEY], reply.weights[p.SHARE_KEY]])
        adverts[s] = reply.weights[p.ADVERT].tobytes()
    return keys, adverts


def _share_task(site, keys, adverts, round_num=1, session="j/r1"):
    others = [o for o in NAMES if o != site]
    data, lengths = advert.pack([adverts[o] for o in others])
    config = {p.SESSION: session, p.SITES: p.as_setting(NAMES),
              p.NEIGHBOURS: p.as_setting(others), p.THRESHOLD: 2, p.WEIGHT: 1 / 3, p.CLIP: 1.0}
    return Task(f"{site}2", "j", round_num, p.SHARE, Weights(
        {p.PEER_KEYS: np.stack([keys[o] for o in others]), p.PEER_ADVERTS: data,
         p.PEER_ADVERT_LENGTHS: lengths}), config)


def _attacker_keys():
    return np.stack([np.frombuffer(crypto.public_key(crypto.new_private_key()), np.uint8)
                     for _ in range(2)])


def test_a_secagg_site_refuses_a_substituted_key_and_seals_no_share(sealed_for):
    identities = ThrowawayIdentities(NAMES)
    sites = {s: SecureAggregationSite(s, identities.identity(s)) for s in NAMES}
    keys, adverts = _advertised(sites)
    with pytest.raises(UntrustedKey) as refused:
        sites["a"].share(_share_task("a", {**keys, "c": _attacker_keys()}, adverts))
    assert ("job j round 1: secure key sharing: site a refuses the step, sending nothing; "
            "public keys of 1 peer(s) failed verification") in str(refused.value)
    assert "site c: its signature does not cover these keys" in str(refused.value)
    # c's own keys, with b's advertisement in its place
    with pytest.raises(UntrustedKey, match="site c: its certificate is site 'b''s, not 'c''s"):
        sites["a"].share(_share_task("a", keys, {**adverts, "c": adverts["b"]}))
    assert sealed_for == []
    sites["a"].share(_share_task("a", keys, adverts))  # the honest relay
    assert sorted(sealed_for) == [("a", "b"), ("a", "c")]


def test_keys_advertised_in_another_round_are_refused():
    identities = ThrowawayIdentities(NAMES)
    sites = {s: SecureAggregationSite(s, identities.identity(s)) for s in NAMES}
    old_keys, old_adverts = _advertised(sites, round_num=1, session="j/r1")
    keys, adverts = _advertised(sites, round_num=2, session="j/r2")
    replayed = {**adverts, "b": old_adverts["b"]}
    with pytest.raises(UntrustedKey, match="site b: its signature does not cover"):
        sites["a"].share(_share_task("a", {**keys, "b": old_keys["b"]}, replayed,
                                     round_num=2, session="j/r2"))


def test_a_site_without_an_identity_refuses_to_advertise_keys():
    site = SecureAggregationSite("a")
    with pytest.raises(PrivacyError, match="site a has no certificate and key"):
        site.advertise(Task("a1", "j", 1, p.TRAIN, START, {p.SESSION: "j/r1"}), UPDATE)


def test_a_server_that_substitutes_one_sites_keys_gets_refusals_not_shares(monkeypatch,
                                                                           sealed_for):
    original = secure._Round.advertise

    def substituting(self, *args, **kwargs):
        keys, samples, metrics = original(self, *args, **kwargs)
        attacker = _attacker_keys()
        keys["site-1"] = (attacker[0].tobytes(), attacker[1].tobytes())
        return keys, samples, metrics

    monkeypatch.setattr(secure._Round, "advertise", substituting)
    failures = Failures()
    with pytest.raises(AggregationError, match="secure key sharing"):
        simulate(toyjob.make_secure_job(num_sites=4, threshold=3), listener=failures)
    refusals = {f.site_id: f.message for f in failures.seen}
    assert sorted(refusals) == ["site-0", "site-2", "site-3"]
    for site, message in refusals.items():
        assert (f"secure key sharing: site {site} refuses the step, sending nothing; public "
                "keys of 1 peer(s) failed verification") in message
        assert "site site-1: its signature does not cover these keys" in message
    # only site-1, which saw its peers' genuine keys, sealed shares: none for the attacker
    assert {sender for sender, _ in sealed_for} == {"site-1"}


def _he_sites(names):
    identities = ThrowawayIdentities(names)
    sites = {s: site_he.HomomorphicSite(s, identities.identity(s)) for s in names}
    keys, adverts = {}, {}
    for s, site in sites.items():
        reply = site.advertise(Task(f"{s}1", "j", 1, he.TRAIN, START, {he.SESSION: "j/r1"}),
                               UPDATE)
        keys[s] = reply.weights[he.PUBLIC_KEY]
        adverts[s] = reply.weights[he.ADVERT].tobytes()
    return sites, keys, adverts


def _keygen_task(others, keys, adverts):
    data, lengths = advert.pack([adverts[o] for o in others])
    config = {he.SESSION: "j/r1", he.SITES: p.as_setting(others), he.POLY_DEGREE: 8192,
              he.SCALE_BITS: 40, he.COEFF_MOD: "[60, 40, 60]"}
    return Task("a2", "j", 1, he.KEYGEN, Weights(
        {he.PEER_KEYS: np.stack([keys[o] for o in others]), he.PEER_ADVERTS: data,
         he.PEER_ADVERT_LENGTHS: lengths}), config)


def test_the_elected_he_site_refuses_a_substituted_key_and_seals_no_context(sealed_for):
    pytest.importorskip("tenseal")
    sites, keys, adverts = _he_sites(NAMES)
    attacker = np.frombuffer(crypto.public_key(crypto.new_private_key()), np.uint8)
    with pytest.raises(UntrustedKey, match=r"homomorphic key generation: site a refuses the step, "
                                           r"sending nothing.*site c: its signature"):
        sites["a"].keygen(_keygen_task(["b", "c"], {**keys, "c": attacker}, adverts))
    assert sealed_for == []


def test_an_he_site_refuses_an_elected_key_the_elected_site_did_not_sign():
    pytest.importorskip("tenseal")
    sites, keys, adverts = _he_sites(NAMES)
    # the server plays the elected site: its own key and context, sealed for b
    private = crypto.new_private_key()
    from fedcare.core.ckks import CkksKeys

    own = CkksKeys.generate(8192, 40, [60, 40, 60])
    key = crypto.agree(private, keys["b"].tobytes(), he.PURPOSE, "j/r1", ("a", "b"))
    sealed = crypto.seal(key, own.secret_bytes(), he.associated("j/r1", "a", "b"))
    task = Task("b3", "j", 1, he.ENCRYPT, Weights(
        {he.SEALED: np.frombuffer(sealed, np.uint8),
         he.ELECTED_KEY: np.frombuffer(crypto.public_key(private), np.uint8),
         he.ELECTED_ADVERT: advert.as_tensor(adverts["a"])}), {he.SESSION: "j/r1",
                                                                he.ELECTED: "a"})
    with pytest.raises(UntrustedKey, match=r"homomorphic encrypted input: site b refuses the step, "
                                           r"sending nothing.*site a: its signature"):
        sites["b"].encrypt(task)
    without = Task("b3", "j", 1, he.ENCRYPT, Weights({k: v for k, v in task.weights.items()
                                                      if k != he.ELECTED_ADVERT}),
                   task.config)
    with pytest.raises(UntrustedKey, match="site a: its key advertisement is malformed"):
        sites["b"].encrypt(without)


def test_a_server_that_substitutes_a_key_in_an_he_round_gets_refusals(monkeypatch):
    pytest.importorskip("tenseal")
    original = homomorphic._Round.encrypt

    def substituting(self, u1, elected, elected_key, *args):
        attacker = crypto.public_key(crypto.new_private_key())
        return original(self, u1, elected, attacker, *args)

    monkeypatch.setattr(homomorphic._Round, "encrypt", substituting)
    failures = Failures()
    with pytest.raises(AggregationError, match="homomorphic encrypted input"):
        simulate(toyjob.make_he_job(num_sites=3), listener=failures)
    refusals = {f.site_id: f.message for f in failures.seen}
    assert sorted(refusals) == ["site-1", "site-2"]  # site-0, elected, keeps its own context
    for site, message in refusals.items():
        assert f"site {site} refuses the step, sending nothing; public keys of 1 peer(s)" \
            in message
        assert "site site-0: its signature does not cover these keys" in message
