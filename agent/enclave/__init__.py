"""The in-enclave side of encrypted token streams: the gRPC service and its pluggable engine.

* :mod:`.generator`: the :class:`TokenGenerator` protocol an engine implements (async iterator of
  text pieces), deterministic toy engines, and an adapter for blocking engines;
* :mod:`.service`: :class:`EnclaveService` (``lessee.v1.Enclave``: ``GetKeyBundle``,
  ``Generate``) and :func:`serve_enclave`, which starts it with health checking and reflection.

How to run it and how to plug in a real engine: ``docs/streams.md``.
"""

from agent.enclave.generator import (
    EchoGenerator,
    ScriptedGenerator,
    ThreadedGenerator,
    TokenGenerator,
)
from agent.enclave.service import (
    EnclaveConfig,
    EnclaveServer,
    EnclaveService,
    StreamOutcome,
    serve_enclave,
)

__all__ = [
    "EchoGenerator",
    "EnclaveConfig",
    "EnclaveServer",
    "EnclaveService",
    "ScriptedGenerator",
    "StreamOutcome",
    "ThreadedGenerator",
    "TokenGenerator",
    "serve_enclave",
]
