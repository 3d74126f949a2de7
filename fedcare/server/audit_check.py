"""Checking an audit log: is it the chain the server wrote and signed?

Three checks, each naming what fails: the chain itself (:func:`fedcare.core.chain.find_breaks`:
an entry edited, deleted or reordered), every signed head's signature (made with a certificate
the federation's CA issued to the server), and every signed head against the entries (an entry
it covers is missing, or the chain up to it was rewritten with fresh hashes).

Entries after the last signed head are reported but not failed while they are fewer than the
server ever leaves unsigned (it signs every ``SIGN_EVERY`` entries): a server killed without a
clean stop leaves some. More than that means signed heads were removed (a log rewritten with
fresh hashes and its heads deleted): that fails. Entries removed from the end after the last
signed head, and a small log rewritten whole, cannot be told from the log alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcare.core.chain import find_breaks
from fedcare.server.audit import SIGN_EVERY, Entry, SignedHead, head_message


@dataclass(frozen=True)
class Verdict:
    """What ``fedcare audit verify`` found. ``ok`` when nothing is wrong."""

    entries: int
    heads: int
    #: The last entry a valid signature covers (0: none).
    signed_through: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unsigned(self) -> int:
        return max(self.entries - self.signed_through, 0)


def verify_chain(entries: Sequence[Entry], heads: Sequence[SignedHead],
                 ca_pem: bytes, *, max_unsigned: int = SIGN_EVERY) -> Verdict:
    """Check ``entries`` (in ``seq`` order) and their signed ``heads`` against the CA."""
    problems = find_breaks([e.link() for e in entries])
    by_seq = {e.seq: e for e in entries}
    ca = x509.load_pem_x509_certificate(ca_pem)
    signed_through = 0
    previous = 0
    for head in heads:
        where = f"the head signed at {head.time} (entry {head.seq})"
        reason = _signature_problem(head, ca)
        if reason:
            problems.append(f"{where}: {reason}")
            continue
        entry = by_seq.get(head.seq)
        if entry is None:
            problems.append(f"entry {head.seq} deleted: {where} covers it (entries removed "
                            "from the end, or renumbered)")
        elif entry.hash != head.hash:
            problems.append(f"entries {previous + 1} to {head.seq} differ from what the server "
                            f"signed: {where} does not match (an entry changed there and the "
                            "hashes after it recomputed)")
        else:
            signed_through = max(signed_through, head.seq)
        previous = head.seq
    unsigned = len(entries) - signed_through
    if unsigned > max_unsigned:
        problems.append(f"entries {signed_through + 1} to {len(entries)} ({unsigned}) are "
                        f"covered by no signature, more than the server ever leaves unsigned "
                        f"({max_unsigned}): signed heads were removed, or the log rewritten")
    return Verdict(len(entries), len(heads), signed_through, problems)


def _signature_problem(head: SignedHead, ca: x509.Certificate) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(head.certificate)
    except ValueError:
        return "its certificate is not a PEM certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "its certificate was not issued by the federation's CA"
    titles = cert.subject.get_attributes_for_oid(NameOID.TITLE)
    if not titles or titles[0].value != "server":
        return "its certificate is not the server's (role is not server)"
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "its certificate has no EC key"
    try:
        key.verify(head.signature, head_message(head.seq, head.hash, head.time),
                   ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "the signature is not valid (signed with another key, or the head was edited)"
    return None
