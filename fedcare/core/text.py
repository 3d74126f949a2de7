"""Text from another party (a site's error, a metric name, a job parameter) made safe to show.

Anything a site, a server or an admin sends may end up in a log line, a table cell, a terminal
or a stored record. :func:`one_line` makes it one bounded line of printable characters: no
newline can forge a log line, no escape sequence can reach a terminal, no megabyte message can
fill a log or a database row.
"""

from __future__ import annotations

#: The longest text kept from another party (a site's error message, for example).
MAX_CHARS = 2000


def one_line(text: object, limit: int = MAX_CHARS) -> str:
    """``text`` with every control character (newline, tab, ESC, DEL, C1 codes) turned into a
    space, runs of white space folded into one, cut to ``limit`` characters (ending ``...``)."""
    cleaned = "".join(c if c.isprintable() else " " for c in str(text))
    line = " ".join(cleaned.split())
    return line if len(line) <= limit else line[:max(limit - 3, 0)] + "..."
