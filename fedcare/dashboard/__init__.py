"""A local web dashboard over one admin's view of a federation (``fedcare dashboard KIT``).

It talks to the server only through the admin gRPC API with the admin kit's certificate, so it
sees and may do exactly what that admin may; see :mod:`fedcare.dashboard.security` for who may
use it. Nothing in fedcare imports this package.
"""

from fedcare.dashboard.app import create_app
from fedcare.dashboard.client import AdminApi, AdminCallError, GrpcAdminApi, may
from fedcare.dashboard.security import Gate

__all__ = ["AdminApi", "AdminCallError", "Gate", "GrpcAdminApi", "create_app", "may"]
