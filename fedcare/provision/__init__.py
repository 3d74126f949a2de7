"""Provisioning: a federation's CA, one startup kit per participant, and revocation."""

from fedcare.provision.kit import Kit, add_site, load_kit, provision, revoke
from fedcare.provision.pki import certificate_identity, issue_certificate, load_crl
from fedcare.provision.project import KitConfig, ProjectConfig, load_project

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
