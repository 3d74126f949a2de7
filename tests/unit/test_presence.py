"""The server's record of since when each site is connected or gone, and what it stated."""

import pytest

from fedcare.core.policy import SitePolicy
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.core.site_profile import (
    MAX_NAMES,
    MAX_POLICY_CHARS,
    PolicySummary,
    parse_policy,
    version_problem,
)
from fedcare.server.presence import PresenceBook
from fedcare.server.visibility import scope_of
from fedcare.transport.grpc.server import SiteDetail

GONE = {"org": None, "version": None, "policy": None, "last_message_age_s": None}


def test_presence_says_since_when_a_site_is_up_or_gone():
    book = PresenceBook()
    book.record("a", True, at_s=10.0)
    book.record("b", True, at_s=11.0)
    book.record("b", False, at_s=20.0)
    assert book.view(["a"]) == {"a": {"connected": True, "since_s": 10.0, **GONE},
                                "b": {"connected": False, "since_s": 20.0, **GONE}}


def test_the_transport_decides_and_a_late_close_leaves_since_unknown():
    book = PresenceBook()
    book.record("a", True, at_s=10.0)
    book.record("a", False, at_s=12.0)  # the old stream's close, after the new one connected
    assert book.view(["a", "c"]) == {"a": {"connected": True, "since_s": None, **GONE},
                                     "c": {"connected": True, "since_s": None, **GONE}}


NAME = "f" * 64
LARGEST = PolicySummary(outbound_filters=[NAME] * MAX_NAMES, inbound_filters=[NAME] * MAX_NAMES,
                        required_filters=[NAME] * MAX_NAMES, budget_set=True,
                        min_rows=2**31 - 1, task_kinds=[NAME] * MAX_NAMES)


def summary():
    return PolicySummary.of(
        SitePolicy.model_validate({"outbound": [{"clip_update_norm": {"max_norm": 5.0}},
                                                {"half_precision": {}}]}),
        PrivacyPolicy.model_validate({"budget_epsilon": 8.0, "min_rows": 20,
                                      "task_kinds": ["train", "evaluate"],
                                      "require": {"svt": {"epsilon": {"max": 1.0}}}}))


def test_presence_shows_the_last_message_version_policy_and_org_of_a_connected_site():
    book = PresenceBook()
    book.record("a", True, at_s=10.0, org="St Mary's")
    book.record("b", True, at_s=11.0, org="Clinic B")
    book.record("b", False, at_s=20.0)
    details = {"a": SiteDetail("0.1.0", summary(), "St Mary's", 2.5),
               "old": SiteDetail(None, None, None, 0.25)}  # a site too old to state them
    view = book.view(["a", "old"], details)
    assert view["a"] == {
        "connected": True, "since_s": 10.0, "org": "St Mary's", "version": "0.1.0",
        "policy": {"outbound_filters": ["clip_update_norm", "half_precision"],
                   "inbound_filters": [], "required_filters": ["svt"], "budget_set": True,
                   "min_rows": 20, "task_kinds": ["evaluate", "train"]},
        "last_message_age_s": 2.5}
    assert view["old"] == {"connected": True, "since_s": None, "org": None, "version": None,
                           "policy": None, "last_message_age_s": 0.25}
    # gone: its organisation stays known, what it stated and its last message do not
    assert view["b"] == {"connected": False, "since_s": 20.0, **GONE, "org": "Clinic B"}


def test_each_role_sees_the_new_details_as_it_sees_presence():
    # admin.Sites keeps the presence entries of the sites the caller's scope sees
    book = PresenceBook()
    book.record("a", True, org="A")
    book.record("b", True, org="B")
    view = book.view(["a", "b"], {s: SiteDetail("1", summary(), s.upper(), 1.0)
                                  for s in ("a", "b")})
    shown = {role: {s: p for s, p in view.items() if scope_of(role).sees(s)}
             for role in ("project_admin", "site_admin:a", "viewer")}
    assert sorted(shown["project_admin"]) == ["a", "b"]
    assert shown["site_admin:a"] == {"a": view["a"]} and shown["viewer"] == {}


def test_the_policy_summary_holds_names_and_numbers_only():
    stated = summary()
    assert "5.0" not in stated.to_json() and "max_norm" not in stated.to_json()
    assert parse_policy(stated.to_json()) == stated
    assert PolicySummary.of(None, None) == PolicySummary()


def test_the_largest_summary_the_schema_allows_fits_the_limit():
    assert len(LARGEST.to_json()) <= MAX_POLICY_CHARS
    many = SitePolicy.model_validate({"outbound": [{"half_precision": {}}] * 40})
    assert len(PolicySummary.of(many, None).outbound_filters) == MAX_NAMES


@pytest.mark.parametrize("text, why", [
    ("x" * 6000, "at most 5120"),
    ('{"outbound_filters": ["../etc/passwd"]}', "outbound_filters.0"),
    ('{"secret": "hunter2"}', "secret"),
    ('{"min_rows": -1}', "min_rows"),
    ("not json", "malformed policy summary"),
])
def test_a_malformed_policy_summary_is_refused_saying_what(text, why):
    with pytest.raises(ValueError, match="policy summary") as info:
        parse_policy(text)
    assert why in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize("version, ok", [
    ("0.1.0", True), ("1.2.3+local build", True), ("x" * 64, True), ("", False),
    ("x" * 65, False), ("1.0\n<script>", False), ("1.0\x00", False), ("1.0\u00e9", False),
])
def test_a_version_is_1_to_64_printable_ascii_characters(version, ok):
    assert (version_problem(version) is None) is ok
