"""Real datasets bundled with fedcare, each naturally partitioned into sites.

Every subpackage ships its raw files together with a ``SOURCE.md`` that records
provenance, checksums, citation and licence.
"""
