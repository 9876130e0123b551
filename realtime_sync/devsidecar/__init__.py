"""The dev sidecar: a small, in-memory stand-in for ``daprd`` — a development tool.

It exists because no ``daprd`` can be installed on the project's machines. It is what
``make run`` and the integration tests put next to the service, and it speaks just the part
of Dapr the service uses. It is **not a Dapr replacement**: one process, in memory (optionally
journalled to a file), one pub/sub component and one state store of its own; from the
resources folder it reads only the Resiliency policies; no mTLS, no actors, no tracing
export. The service never imports it, and it never imports the service.

Toward the app it behaves as daprd does toward a gRPC app (each behaviour, with the daprd
source it was read from, is in docs/dapr-conformance.md): it waits for the app port, probes
the app's health when asked to (:mod:`.health`; deliveries start on the first healthy probe
and stop while the app is unhealthy), calls ``AppCallback/ListTopicSubscriptions`` once per
app instance (unsigned), then ``OnTopicEvent`` per message with daprd's CloudEvent envelope
and metadata (signed), honouring SUCCESS / RETRY / DROP (a RETRY is retried only as the
loaded resiliency policy says, see :mod:`.resources`; then the dead-letter topic) and acking
on UNIMPLEMENTED (a lost message, as with daprd). A subscription that asks for bulk
(``bulk_subscribe``) gets ``OnBulkTopicEvent`` calls instead, batched as daprd's default
bulk subscriber does and each entry's status handled as above (:mod:`.bulk`).
``/v1.0/healthz`` is ready once the app is
subscribed. With ``--dapr-block-shutdown-duration`` a SIGTERM stops delivery and keeps the
APIs up until the app reports unhealthy. See :mod:`.broker` for the reply table and
:mod:`.envelope` for how published bytes become the subscriber's ``data``.

Toward clients it serves the Dapr gRPC API (state with ETags, TTLs and transactions; publish;
see :mod:`.api`) and the HTTP API subset plus dev-only endpoints (``/dev/stats``,
``/dev/topics/{topic}/messages``, ``/dev/faults``; see :mod:`.http_api`).

Run it with ``python -m realtime_sync.devsidecar --help``, or embed it::

    sidecar = DevSidecar(SidecarConfig(grpc_port=0, http_port=0, app_ports=(50051,)))
    sidecar.start()
    ...
    sidecar.stop()
"""

from .cli import main
from .config import DeliveryMode, RetryPolicy, SidecarConfig
from .sidecar import DevSidecar

__all__ = ["DeliveryMode", "DevSidecar", "RetryPolicy", "SidecarConfig", "main"]
