"""Provisioning: a federation's CA, one startup kit per participant, and revocation.

A study coordinator writes a project file (the federation, its server, sites and admins) and
runs ``fedcare provision project.yaml -o kits/``: this makes a CA in ``kits/.ca`` and one kit
per participant in ``kits/<name>/``, each with the CA certificate, its own certificate and
private key (0600), its ``config.yaml`` and a ``start.sh``. Each kit goes to its owner; the CA
key stays with the coordinator and is in no kit. Sites can be added later with the same CA, and
any participant can be revoked by name; the server re-reads the revocation list on every call.

This package imports only ``fedcare.core`` from fedcare, so the server, sites and CLI can all
use it without pulling in one another.
"""

from fedcare.provision.kit import Kit, load_kit
from fedcare.provision.pki import certificate_identity, issue_certificate, load_crl
from fedcare.provision.project import KitConfig, ProjectConfig, load_project
from fedcare.provision.provisioner import add_site, provision, revoke

__all__ = [
    "Kit",
    "KitConfig",
    "ProjectConfig",
    "add_site",
    "certificate_identity",
    "issue_certificate",
    "load_crl",
    "load_kit",
    "load_project",
    "provision",
    "revoke",
]
