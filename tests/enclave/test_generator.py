"""The toy engines and the blocking-engine adapter."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from agent.enclave import EchoGenerator, ScriptedGenerator, ThreadedGenerator, TokenGenerator
from agent.enclave.generator import GeneratorFailure
from sealing.stream import GenerationParams


async def _all(gen: TokenGenerator, prompt: str, params: GenerationParams) -> list[str | bytes]:
    return [piece async for piece in gen.generate(prompt, params)]


def test_echo_is_deterministic_and_bounded() -> None:
    gen = EchoGenerator(upper=True)
    params = GenerationParams(max_new_tokens=3)
    out = asyncio.run(_all(gen, "  one two\tthree four ", params))
    assert out == ["ONE", " TWO", " THREE"] == gen.tokens_for("one two three four", params)
    assert asyncio.run(_all(EchoGenerator(), "", GenerationParams())) == []
    assert isinstance(gen, TokenGenerator)


def test_delay_bounds() -> None:
    with pytest.raises(ValueError):
        EchoGenerator(delay_s=-1)
    with pytest.raises(ValueError):
        ScriptedGenerator(["a"], delay_s=5)


def test_scripted_failure_and_close_counting() -> None:
    gen = ScriptedGenerator(["a", "b", "c"], fail_after=2)
    with pytest.raises(GeneratorFailure):
        asyncio.run(_all(gen, "", GenerationParams()))
    assert gen.calls == 1 and gen.closed == 1
    tail_fail = ScriptedGenerator(["a"], fail_after=1)  # fails after the whole script
    with pytest.raises(GeneratorFailure):
        asyncio.run(_all(tail_fail, "", GenerationParams()))
    clean = ScriptedGenerator(["a", "b"])
    assert asyncio.run(_all(clean, "", GenerationParams())) == ["a", "b"]
    assert clean.closed == 0


def test_threaded_adapter_runs_off_the_event_loop() -> None:
    threads: set[int] = set()

    def blocking(prompt: str, params: GenerationParams) -> Iterator[str]:
        for word in prompt.split()[: params.max_new_tokens]:
            threads.add(threading.get_ident())
            yield word

    out = asyncio.run(
        _all(ThreadedGenerator(blocking), "a b c", GenerationParams(max_new_tokens=2))
    )
    assert out == ["a", "b"]
    assert threading.get_ident() not in threads

    def wrong(prompt: str, params: GenerationParams) -> Iterator[object]:
        yield 42

    with pytest.raises(TypeError):
        asyncio.run(_all(ThreadedGenerator(wrong), "", GenerationParams()))  # type: ignore[arg-type]
