"""Every admin call in the audit log: who (verified certificate), what, on which job, outcome.

:func:`audited` wraps one method of the admin service. A call that succeeds is recorded under
its method's name (``Download``, ``Status``) before its answer leaves: a unary call once it has
its reply, a streamed one (``Download``, ``Watch``) when its first message is ready. A call
that fails is recorded as ``refused:<Method>`` with the status code and the reason the caller
was given: a role that may not, a revoked certificate, a malformed job id, a job refused at
submission, no such job. An entry that cannot be written fails the call: nothing is served
unaudited, except a submit or an abort that has already acted (its audit failure is logged).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar, cast

import grpc

from fedcare.core.errors import FedcareError
from fedcare.core.text import one_line
from fedcare.transport.grpc.tls import peer_identity

log = logging.getLogger(__name__)
#: Calls that change something: done when their audit entry fails, they are answered anyway
#: (the failure is logged); any other call is refused when it cannot be audited.
ACTED = {"Submit", "Abort"}
Request = TypeVar("Request")
Response = TypeVar("Response")


class _Audit(Protocol):
    def audit(self, actor: str, action: str, detail: str = "",
              role: str | None = None) -> None: ...


class _Server(Protocol):
    @property
    def store(self) -> _Audit: ...


class _Service(Protocol):
    @property
    def server(self) -> _Server: ...


class _Outcome(Protocol):
    """What gRPC's servicer context says of a call it aborted (not in grpc's type stubs)."""

    def code(self) -> object: ...
    def details(self) -> object: ...


Service = TypeVar("Service", bound=_Service)
Method = Callable[[Service, Request, grpc.ServicerContext], Response]


def audited(method: Method[Service, Request, Response]) -> Method[Service, Request, Response]:
    """Record every call of ``method`` (unary or server-streaming) in the audit log."""
    name = method.__name__

    def record(service: Service, context: grpc.ServicerContext, request: object,
               reply: object = None, error: BaseException | None = None) -> None:
        identity = peer_identity(context)
        target = _target(request, reply)
        if error is None:
            action, detail = name, target
        else:
            outcome = cast(_Outcome, context)  # what the method aborted with, if it did
            code, reason = outcome.code(), outcome.details()
            if isinstance(reason, bytes):
                reason = reason.decode(errors="replace")
            status = code.name if isinstance(code, grpc.StatusCode) else "INTERNAL"
            action = f"refused:{name}"
            detail = f"{status}: {reason or type(error).__name__}" + (
                f" ({target})" if target else "")
        try:
            service.server.store.audit(identity.name if identity else "(no certificate)",
                                       action, detail,
                                       role=(identity.role or "") if identity else "")
        except FedcareError as exc:  # e.g. a full disk
            log.error("audit log: cannot record %s by %s: %s", action,
                      identity.name if identity else "(no certificate)", exc)
            if error is not None:
                return  # the call failed already: its own error is the one to report
            if name in ACTED:  # done already; the admin must not think it was not
                return
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"{name} not served: the audit log cannot be written ({exc})")

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def streamed(service: Service, request: Request,
                     context: grpc.ServicerContext) -> Response:
            def messages() -> Iterator[object]:
                first = True
                try:
                    for message in cast(Iterator[object], method(service, request, context)):
                        if first:
                            record(service, context, request)
                            first = False
                        yield message
                except Exception as exc:
                    if first:
                        record(service, context, request, error=exc)
                    raise
                if first:  # ended without a message
                    record(service, context, request)
            return messages()  # type: ignore[return-value]
        return streamed

    @functools.wraps(method)
    def unary(service: Service, request: Request, context: grpc.ServicerContext) -> Response:
        try:
            reply = method(service, request, context)
        except Exception as exc:
            record(service, context, request, error=exc)
            raise
        record(service, context, request, reply)
        return reply
    return unary


def _target(request: object, reply: object) -> str:
    """What a call was about, one bounded line: the job, or what was submitted."""
    parts = []
    for value in (getattr(reply, "job_id", ""), getattr(request, "job_id", ""),
                  getattr(request, "entry_point", ""), getattr(request, "params_json", ""),
                  getattr(request, "name", "")):
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    return one_line(" ".join(parts), 500)
