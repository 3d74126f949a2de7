"""The server's audit chain: every kind of tampering is found and named, signatures are checked."""

import sqlite3
import threading

import pytest
from certs import ThrowawayCA

from fedcare.core.chain import GENESIS, Link, find_breaks, link_hash
from fedcare.server.audit import AuditLog, HeadSigner, read_chain
from fedcare.server.audit_check import verify_chain
from fedcare.server.store import Store


@pytest.fixture()
def ca():
    return ThrowawayCA()


def signer(ca, name="server", role="server"):
    tls, _ = ca.issue(name, role)
    return HeadSigner(tls.key, tls.cert)


def written(path, ca, count=10, sign_every=4):
    log = AuditLog(path, signer(ca), sign_every=sign_every)
    for i in range(1, count + 1):
        log.append("alice" if i % 2 else "server", "project_admin" if i % 2 else "server",
                   "Status" if i % 2 else "start", f"detail {i}")
    log.close()
    return path


def check(path, ca):
    return verify_chain(*read_chain(path), ca.pem)


def sql(path, *statements):
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def test_an_untouched_log_verifies_and_its_head_is_signed_at_close(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca, count=10, sign_every=4)
    verdict = check(path, ca)
    assert verdict.ok, verdict.problems
    assert (verdict.entries, verdict.signed_through, verdict.unsigned) == (10, 10, 0)
    assert verdict.heads == 3  # after 4, after 8, and at close (10)
    entries, _ = read_chain(path)
    assert entries[0].prev_hash == GENESIS and entries[1].prev_hash == entries[0].hash
    assert entries[0].time.endswith("Z") and entries[0].role == "project_admin"


def test_an_edited_entry_is_named(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca)
    sql(path, "UPDATE entries SET detail = 'nothing to see' WHERE seq = 5")
    verdict = check(path, ca)
    assert not verdict.ok
    assert verdict.problems == ["entry 5 edited: its content no longer matches its hash"]


def test_an_edited_entry_with_its_hash_recomputed_is_named(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca)
    entries, _ = read_chain(path)
    e = entries[4]
    forged = link_hash(5, (e.time, "mallory", e.role, e.action, e.detail), e.prev_hash)
    sql(path, f"UPDATE entries SET actor = 'mallory', hash = '{forged}' WHERE seq = 5")
    problems = check(path, ca).problems
    assert "entry 5 changed and its hash recomputed: entry 6 does not link to it" in problems


def test_a_rewritten_chain_no_longer_matches_the_signed_head(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca, count=10, sign_every=4)
    entries, _ = read_chain(path)
    prev = entries[4].prev_hash
    db = sqlite3.connect(path)
    for e in entries[4:]:  # edit entry 5, then recompute every hash after it
        actor = "mallory" if e.seq == 5 else e.actor
        digest = link_hash(e.seq, (e.time, actor, e.role, e.action, e.detail), prev)
        db.execute("UPDATE entries SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                   (actor, prev, digest, e.seq))
        prev = digest
    db.commit()
    db.close()
    problems = check(path, ca).problems
    assert problems and problems[0].startswith("entries 5 to 8 differ from what the server signed")


def test_a_deleted_entry_is_named(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca)
    sql(path, "DELETE FROM entries WHERE seq = 3")
    assert check(path, ca).problems == ["entry 3 deleted"]


def test_a_deleted_entry_with_the_rest_renumbered_is_named(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca)
    sql(path, "DELETE FROM entries WHERE seq = 3", "UPDATE entries SET seq = seq - 1 WHERE seq > 3")
    problems = check(path, ca).problems
    assert problems[0] == "entry 3 deleted"
    assert "entry 4 is stored as entry 3 (reordered or renumbered)" in problems


def test_reordered_entries_are_named(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca)
    sql(path, "UPDATE entries SET seq = -1 WHERE seq = 6",
        "UPDATE entries SET seq = 6 WHERE seq = 7", "UPDATE entries SET seq = 7 WHERE seq = -1")
    assert check(path, ca).problems == [
        "entry 6 is stored as entry 7 (reordered or renumbered)",
        "entry 7 is stored as entry 6 (reordered or renumbered)"]


def test_truncation_is_found_up_to_the_last_signed_head_only(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca, count=10, sign_every=4)
    sql(path, "DELETE FROM entries WHERE seq > 6")  # the heads at 8 and 10 cover them
    problems = check(path, ca).problems
    assert any(p.startswith("entry 8 deleted: the head signed at") for p in problems)
    # removing the heads too: only what no signature covers is gone, and that is not seen
    path2 = written(tmp_path / "audit2.db", ca, count=10, sign_every=4)
    sql(path2, "DELETE FROM entries WHERE seq > 8", "DELETE FROM heads WHERE seq > 8")
    verdict = check(path2, ca)
    assert verdict.ok and verdict.signed_through == 8


def test_a_head_signed_with_another_key_or_by_another_ca_is_refused(tmp_path, ca):
    path = written(tmp_path / "audit.db", ca, count=4, sign_every=100)
    good = check(path, ca)
    assert good.ok and good.heads == 1
    # a head re-signed by a key that is not the server certificate's
    impostor = signer(ca)  # a valid server certificate, but its key signs for the other
    _, heads = read_chain(path)
    other = impostor.sign(heads[0].seq, heads[0].hash, heads[0].time)
    sql(path, f"UPDATE heads SET signature = x'{other.hex()}'")
    problems = check(path, ca).problems
    assert problems == [f"the head signed at {heads[0].time} (entry 4): the signature is not "
                        "valid (signed with another key, or the head was edited)"]
    # a head signed with a certificate of another CA, or of a participant that is not the server
    for bogus, reason in ((signer(ThrowawayCA("evil")), "not issued by the federation's CA"),
                          (signer(ca, "alice", "project_admin"), "not the server's")):
        path3 = tmp_path / f"audit-{reason[:7]}.db"
        log = AuditLog(path3, bogus)
        log.append("server", "server", "start")
        log.close()
        problems = check(path3, ca).problems
        assert len(problems) == 1 and reason in problems[0], problems


def test_an_unsigned_tail_is_reported_not_failed(tmp_path, ca):
    log = AuditLog(tmp_path / "audit.db", signer(ca), sign_every=3)
    for i in range(5):
        log.append("server", "server", "x", str(i))
    verdict = check(tmp_path / "audit.db", ca)  # read while still open: 4 and 5 unsigned yet
    assert verdict.ok and verdict.signed_through == 3 and verdict.unsigned == 2
    log.close()


def test_appends_from_many_threads_make_one_chain(tmp_path, ca):
    log = AuditLog(tmp_path / "audit.db", signer(ca), sign_every=7)

    def work(n):
        for i in range(50):
            log.append(f"t{n}", "viewer", "Status", str(i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    verdict = check(tmp_path / "audit.db", ca)
    assert verdict.ok and verdict.entries == 300 and verdict.signed_through == 300


def test_a_reopened_log_continues_the_chain(tmp_path, ca):
    written(tmp_path / "audit.db", ca, count=3)
    log = AuditLog(tmp_path / "audit.db", signer(ca))
    assert log.append("server", "server", "start") == 4
    log.close()
    assert check(tmp_path / "audit.db", ca).ok


def test_detail_is_one_bounded_line(tmp_path, ca):
    log = AuditLog(tmp_path / "audit.db")
    log.append("eve\nforged", "viewer", "Status", "x\n2026 INFO fake line" + "y" * 5000)
    entry = log.recent(1)[0]
    log.close()
    assert "\n" not in entry.actor + entry.detail and len(entry.detail) <= 1000


def test_the_old_events_table_moves_into_the_chain(tmp_path, ca):
    db = sqlite3.connect(tmp_path / "server.db")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time_s REAL, "
               "actor TEXT, action TEXT, detail TEXT)")
    db.execute("INSERT INTO events (time_s, actor, action, detail) VALUES "
               "(1700000000.5, 'alice', 'submit', 'job-0123456789')")
    db.commit()
    db.close()
    store = Store(tmp_path / "server.db",
                  AuditLog(tmp_path / "audit.db", signer(ca)))
    store.audit("server", "start", "listening")
    [latest, imported] = store.events(2)
    store.close()
    assert (imported.actor, imported.action, imported.detail, imported.time) == (
        "alice", "imported:submit", "job-0123456789", "2023-11-14T22:13:20.000Z")
    assert (latest.actor, latest.role, latest.action) == ("server", "server", "start")
    assert check(tmp_path / "audit.db", ca).ok
    db = sqlite3.connect(tmp_path / "server.db")
    assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'events'").fetchall()
    db.close()


def test_find_breaks_on_a_hand_made_chain():
    links, prev = [], GENESIS
    for seq in range(1, 6):
        digest = link_hash(seq, ("a", seq), prev)
        links.append(Link(seq, ("a", seq), prev, digest))
        prev = digest
    assert find_breaks(links) == []
    assert find_breaks(links[1:]) == ["entry 1 deleted"]
    assert find_breaks([links[0], Link(2, ("b", 2), links[1].prev_hash, links[1].hash),
                        *links[2:]]) == ["entry 2 edited: its content no longer matches its hash"]


def test_the_head_is_signed_every_interval_while_entries_come(tmp_path, ca):
    log = AuditLog(tmp_path / "audit.db", signer(ca), sign_every=1000, sign_interval_s=0.05)
    log.start()
    log.append("server", "server", "start")
    for _ in range(200):  # the periodic signer, not close(), signs entry 1
        if read_chain(tmp_path / "audit.db")[1]:
            break
        threading.Event().wait(0.02)
    _, heads = read_chain(tmp_path / "audit.db")
    log.close()
    assert [h.seq for h in heads] == [1]


def test_a_log_stripped_of_its_signed_heads_fails_once_longer_than_a_signing_interval(
        tmp_path, ca):
    path = written(tmp_path / "audit.db", ca, count=12, sign_every=4)
    sql(path, "DELETE FROM heads")  # e.g. after rewriting every entry with fresh hashes
    verdict = verify_chain(*read_chain(path), ca.pem, max_unsigned=4)
    assert not verdict.ok
    assert "entries 1 to 12 (12) are covered by no signature" in verdict.problems[0]
    # a short unsigned tail (a server killed before its next signature) is only reported
    short = written(tmp_path / "short.db", ca, count=3, sign_every=4)
    sql(short, "DELETE FROM heads")
    verdict = verify_chain(*read_chain(short), ca.pem, max_unsigned=4)
    assert verdict.ok and verdict.unsigned == 3
