"""Names that may become a file or folder name: a site's id, above all.

A site's id names its saved model in a cross-site validation run and its log in a simulation;
whoever chose it (a job's author, the CA that signed a site's certificate) must not be able to
reach outside the folder it is put in. A valid id is one plain path component: letters, digits,
``_``, ``-`` and ``.``, starting with a letter or digit (so never ``.`` or ``..``), at most 128
characters.
"""

from __future__ import annotations

import re

#: What a site id may look like (provisioned names are stricter: lower case, at most 63).
SITE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_SITE_ID = re.compile(SITE_ID_PATTERN)


def site_id_problem(site_id: object) -> str | None:
    """Why ``site_id`` cannot name a site (and so a file), or None."""
    if isinstance(site_id, str) and _SITE_ID.fullmatch(site_id):
        return None
    shown = repr(site_id if not isinstance(site_id, str) else site_id[:80])
    return f"site id {shown} is not a plain name (letters, digits, '_', '-', '.'; 1..128)"
