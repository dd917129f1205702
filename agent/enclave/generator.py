"""The pluggable token generator behind the enclave's ``Generate`` RPC.

Why an *async* iterator: the enclave service runs on ``grpc.aio``, so one event loop serves every
concurrent stream, and the engines worth plugging in are asynchronous already (vLLM's
``AsyncLLMEngine.generate`` and SGLang's ``async_generate`` are async generators). A synchronous
iterator would block the loop, and with it every other stream and the health check, for the
whole generation. Engines that only offer a blocking iterator (Hugging Face's
``TextIteratorStreamer``) are wrapped by :class:`ThreadedGenerator`, which runs each ``next()``
in a worker thread.

What a generator yields: text pieces (``str``) or, for byte-level vocabularies whose tokens can
split a UTF-8 sequence, raw ``bytes``. The service seals each non-empty piece as one token (a
piece longer than ``MAX_TOKEN_LEN`` bytes is split); the client SDK decodes UTF-8 incrementally,
so a split inside a character is harmless. A generator may stop early (end of sequence) and
must stop after ``params.max_new_tokens`` pieces; the service enforces that bound anyway.

Cancellation: when the client goes away or a deadline passes, the service closes the iterator
(``aclose()``), which raises ``GeneratorExit`` (or ``CancelledError``) at the generator's
``await``/``yield``. An engine adapter should release its request there (see the vLLM recipe in
``docs/streams.md``).

The toy generators here are deterministic, dependency-free engines for the demo and the tests.
They never look at anything but their arguments, and they never log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from sealing.stream import GenerationParams

__all__ = [
    "EchoGenerator",
    "GeneratorFailure",
    "ScriptedGenerator",
    "ThreadedGenerator",
    "TokenGenerator",
]

#: Longest per-token delay the toy generators accept: they exist for demos and tests, where a
#: token per second is already slow; anything larger is a configuration mistake.
MAX_TOY_DELAY_S = 1.0


@runtime_checkable
class TokenGenerator(Protocol):
    """Anything that turns a prompt into a stream of text (or byte) pieces.

    ``generate`` is called once per accepted request, inside the enclave, with the decrypted
    prompt and the sampling parameters the client sealed with it. It must not log either.
    """

    def generate(self, prompt: str, params: GenerationParams) -> AsyncIterator[str | bytes]:
        """Yield the generated pieces in order; raise to make the service abort the stream."""
        ...


class GeneratorFailure(RuntimeError):  # noqa: N818 (a deliberate failure, not an error class name)
    """Raised by :class:`ScriptedGenerator` to simulate an engine crash mid-stream."""


def _check_delay(delay_s: float) -> float:
    if not 0.0 <= delay_s <= MAX_TOY_DELAY_S:
        raise ValueError(f"delay_s must be 0..{MAX_TOY_DELAY_S} seconds")
    return delay_s


class EchoGenerator:
    """The demo engine: echoes the prompt word by word (each word with its leading space),
    optionally upper-cased, then stops; at most ``max_new_tokens`` words.

    Deterministic, so a test can predict every token; ``delay_s`` between tokens makes the
    stream look like a real engine's.
    """

    def __init__(self, *, delay_s: float = 0.0, upper: bool = False) -> None:
        self.delay_s = _check_delay(delay_s)
        self.upper = upper

    def tokens_for(self, prompt: str, params: GenerationParams) -> list[str]:
        """The exact pieces :meth:`generate` yields for ``prompt`` (tests compare with this)."""
        words = prompt.split()
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if self.upper:
            pieces = [p.upper() for p in pieces]
        return pieces[: params.max_new_tokens]

    async def generate(self, prompt: str, params: GenerationParams) -> AsyncIterator[str]:
        for piece in self.tokens_for(prompt, params):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield piece


class ScriptedGenerator:
    """Yields a fixed script of pieces regardless of the prompt; optionally fails after
    ``fail_after`` pieces (to exercise the abort path) or stalls for ``stall_s`` before the
    piece at index ``stall_at`` (to exercise deadlines and cover records).

    ``calls`` counts the requests it served and ``closed`` how many iterators were closed before
    their end, so tests can check that a cancelled stream also stops the engine.
    """

    def __init__(
        self,
        script: Sequence[str | bytes],
        *,
        delay_s: float = 0.0,
        fail_after: int | None = None,
        stall_at: int | None = None,
        stall_s: float = 0.0,
    ) -> None:
        self.script = list(script)
        self.delay_s = _check_delay(delay_s)
        self.fail_after = fail_after
        self.stall_at = stall_at
        self.stall_s = stall_s
        self.calls = 0
        self.closed = 0

    async def generate(self, prompt: str, params: GenerationParams) -> AsyncIterator[str | bytes]:
        self.calls += 1
        finished = False
        try:
            for i, piece in enumerate(self.script[: params.max_new_tokens]):
                if self.fail_after is not None and i == self.fail_after:
                    raise GeneratorFailure("scripted engine failure")
                if i == self.stall_at:
                    await asyncio.sleep(self.stall_s)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield piece
            if self.fail_after is not None and self.fail_after >= len(self.script):
                raise GeneratorFailure("scripted engine failure")
            finished = True
        finally:
            if not finished:
                self.closed += 1


class ThreadedGenerator:
    """Adapts a blocking engine, ``fn(prompt, params) -> Iterable[str | bytes]``, to the async
    protocol: each ``next()`` runs in a worker thread, so the event loop (and every other stream)
    keeps running while the engine computes.

    On cancellation the iterator is abandoned after its current ``next()``; a blocking engine
    that should stop early must watch a flag of its own (the thread cannot be interrupted).
    """

    def __init__(self, fn: Callable[[str, GenerationParams], Iterable[str | bytes]]) -> None:
        self._fn = fn

    async def generate(self, prompt: str, params: GenerationParams) -> AsyncIterator[str | bytes]:
        done = object()
        it: Iterator[str | bytes] = iter(await asyncio.to_thread(self._fn, prompt, params))
        while True:
            piece = await asyncio.to_thread(next, it, done)
            if piece is done:
                return
            if not isinstance(piece, str | bytes):
                raise TypeError("a blocking engine must yield str or bytes pieces")
            yield piece
