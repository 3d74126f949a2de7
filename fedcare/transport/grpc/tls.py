"""Mutual TLS for gRPC: credentials from a kit's PEM bytes, and who is on the other end.

Every connection is mutually authenticated: the server requires a client certificate issued by
the federation's CA, and a participant's identity is its certificate's common name, read from
the verified TLS session on every call, never from anything the peer says about itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import grpc
from cryptography import x509

#: Keepalive pings find dead peers (a pulled cable, a killed process) within about 30 s.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]

#: Initial-metadata key by which the server tells a site its stream was accepted.
ACCEPTED = "fedcare-accepted"
#: Call-metadata keys with which a site states its fedcare version and its policy summary
#: (:mod:`fedcare.core.site_profile`) when it connects. Metadata, not fields of the codec's
#: Hello: a server that predates them ignores them, where it would refuse a Hello with fields
#: it does not know; a site that predates them sends none and shows as "unknown".
VERSION_KEY = "fedcare-version"
POLICY_KEY = "fedcare-policy"


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of the CA certificate, this participant's certificate and private key."""

    ca: bytes
    cert: bytes
    key: bytes


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.ca,
                                       require_client_auth=True)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                        certificate_chain=tls.cert)


@dataclass(frozen=True)
class PeerIdentity:
    """The verified identity of the peer of one call."""

    name: str
    serial: int
    address: str
    #: What the CA certified this participant to be ("server", "site", "project_admin",
    #: "site_admin:<site>", "viewer"): the certificate's title attribute, set at provisioning.
    role: str | None = None
    #: The organisation the CA certified (the certificate's O), None without one.
    org: str | None = None


def peer_identity(context: grpc.ServicerContext) -> PeerIdentity | None:
    """Common name and serial of the client certificate, or None without a verified one."""
    auth = context.auth_context()
    names = auth.get("x509_common_name")
    pems = auth.get("x509_pem_cert")
    if not names or not pems:
        return None
    # grpc-stubs type these values as str; gRPC gives bytes
    cert = x509.load_pem_x509_certificate(cast(bytes, pems[0]))
    titles = cert.subject.get_attributes_for_oid(x509.NameOID.TITLE)
    role = str(titles[0].value) if titles else None
    orgs = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    org = str(orgs[0].value) if orgs else None
    return PeerIdentity(cast(bytes, names[0]).decode(), cert.serial_number, context.peer(), role,
                        org)
