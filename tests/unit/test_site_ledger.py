"""A site's upload ledger: the hash of the exact message bytes, chained; tampering is named."""

import sqlite3

import blake3
import numpy as np

from fedcare.core.message import Reply, Task, TrainResult
from fedcare.core.weights import Weights
from fedcare.site.ledger import UploadLedger, read_uploads, verify_uploads
from fedcare.transport.codec import encode, encode_parts


def reply(i, error=None):
    task = Task(f"job-0123456789/r{i}/train/site-0", "job-0123456789", i, "train")
    if error:
        return task, Reply(task.task_id, "site-0", error=error)
    weights = Weights({"w": np.full((64, 64), float(i), np.float32)})
    return task, Reply(task.task_id, "site-0", result=TrainResult(weights, 10, {"loss": 0.5}))


def test_each_upload_is_recorded_with_the_hash_of_its_exact_bytes(tmp_path):
    ledger = UploadLedger(tmp_path / "uploads.db")
    sent = []
    for i in range(1, 4):
        task, answer = reply(i, error="disk full" if i == 2 else None)
        ledger.record(task, answer, encode_parts(answer))
        sent.append(encode(answer))
    ledger.close()
    uploads = read_uploads(tmp_path / "uploads.db")
    assert [u.blake3 for u in uploads] == [blake3.blake3(b).hexdigest() for b in sent]
    assert [u.size_bytes for u in uploads] == [len(b) for b in sent]
    assert [u.outcome for u in uploads] == ["result", "error", "result"]
    assert uploads[0].task_id == "job-0123456789/r1/train/site-0"
    assert (uploads[0].job_id, uploads[0].kind) == ("job-0123456789", "train")
    assert verify_uploads(uploads) == []
    again = UploadLedger(tmp_path / "uploads.db")  # a restarted site continues the chain
    again.record(*reply(4)[:2], encode_parts(reply(4)[1]))
    again.close()
    assert verify_uploads(read_uploads(tmp_path / "uploads.db")) == []


def test_an_edited_or_deleted_upload_is_named(tmp_path):
    ledger = UploadLedger(tmp_path / "uploads.db")
    for i in range(1, 6):
        task, answer = reply(i)
        ledger.record(task, answer, encode_parts(answer))
    ledger.close()
    db = sqlite3.connect(tmp_path / "uploads.db")
    db.execute("UPDATE uploads SET blake3 = ? WHERE seq = 2", ("0" * 64,))
    db.execute("DELETE FROM uploads WHERE seq = 4")
    db.commit()
    db.close()
    assert verify_uploads(read_uploads(tmp_path / "uploads.db")) == [
        "entry 2 edited: its content no longer matches its hash", "entry 4 deleted"]
