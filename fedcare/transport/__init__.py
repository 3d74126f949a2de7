"""Transports: how tasks reach sites. Only this package knows how bytes move."""

from fedcare.transport.base import Transport
from fedcare.transport.memory import MemoryTransport
from fedcare.transport.pipe import PipeTransport
from fedcare.transport.resources import SiteResources

__all__ = ["MemoryTransport", "PipeTransport", "SiteResources", "Transport"]
