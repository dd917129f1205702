"""Golden (RIM) versus runtime (report) measurements, by NVIDIA's rules, with every failure named.

NVIDIA's rules (nvtrust ``verifier.py``), kept:

* only ``active`` RIM entries count;
* RIM index k describes report measurement block k+1;
* a block matches when any alternative equals the runtime value and the sizes agree;
* the driver and the VBIOS RIM must not both have an active entry for the same index;
* RIM index 35 is skipped when the report says NVDEC0 is disabled (the caller decides: pass
  ``skip_rim_indexes={NVDEC_RIM_INDEX}``).

Where this differs: nvtrust stops at the first driver/VBIOS conflict with an exception and
crashes (IndexError) when a golden index has no runtime block; here a conflict is listed, a
missing block is a ``missing`` mismatch, every mismatch is reported with both values, and a
comparison with no golden value at all is not ``ok`` (nothing was checked).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from attest.errors import InputError
from attest.nvidia.rim_parse import Rim, RimMeasurement

#: RIM index of the NVDEC0 measurement that NVIDIA skips when the report's NVDEC0_STATUS says
#: the engine is disabled.
NVDEC_RIM_INDEX = 35

MismatchReason = Literal["value", "size", "missing"]
#: Which RIM a golden value came from: a GPU's driver or VBIOS RIM, or an NVSwitch's BIOS RIM.
Source = Literal["driver", "vbios", "bios"]


@dataclass(frozen=True)
class MeasurementMismatch:
    """One golden entry that the report does not satisfy."""

    rim_index: int
    block_index: int
    source: Source
    expected: tuple[bytes, ...]
    actual: bytes | None
    reason: MismatchReason

    def describe(self) -> str:
        actual = "absent" if self.actual is None else self.actual.hex()
        expected = " | ".join(v.hex() for v in self.expected)
        return (
            f"{self.source} RIM index {self.rim_index} (block {self.block_index}): "
            f"{self.reason}; expected {expected}; got {actual}"
        )


@dataclass(frozen=True)
class MeasurementComparison:
    """The outcome of one report against one driver + VBIOS RIM pair (indexes are RIM indexes)."""

    matched: tuple[int, ...]
    mismatches: tuple[MeasurementMismatch, ...]
    conflicts: tuple[int, ...]
    skipped: tuple[int, ...]
    #: active golden entries considered (matched + mismatched + conflicting)
    golden_count: int

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.conflicts and self.golden_count > 0

    @property
    def mismatched_indexes(self) -> tuple[int, ...]:
        return tuple(m.rim_index for m in self.mismatches)


def _check_runtime(runtime: Mapping[int, bytes]) -> None:
    for block, value in runtime.items():
        if not isinstance(block, int) or not 1 <= block <= 254:
            raise InputError(f"runtime block index {block!r} is not 1..254")
        if not isinstance(value, bytes):
            raise InputError(f"runtime block {block} is not bytes")


def _compare_one(
    entry: RimMeasurement, source: Source, runtime: Mapping[int, bytes]
) -> MeasurementMismatch | None:
    block = entry.index + 1
    actual = runtime.get(block)
    if actual is None:
        reason: MismatchReason = "missing"
    elif len(actual) != entry.size:
        reason = "size"
    elif any(actual == alt for alt in entry.alternatives):
        return None
    else:
        reason = "value"
    return MeasurementMismatch(
        rim_index=entry.index,
        block_index=block,
        source=source,
        expected=entry.alternatives,
        actual=actual,
        reason=reason,
    )


def _compare_golden(
    golden: Mapping[int, tuple[Source, RimMeasurement]],
    conflicts: Collection[int],
    runtime: Mapping[int, bytes],
    skip_rim_indexes: Collection[int],
) -> MeasurementComparison:
    """The one comparison loop: every golden index in order, conflicts and skips set aside."""
    matched: list[int] = []
    mismatches: list[MeasurementMismatch] = []
    skipped: list[int] = []
    for index in sorted(golden):
        if index in conflicts:
            continue
        if index in skip_rim_indexes:
            skipped.append(index)
            continue
        source, entry = golden[index]
        result = _compare_one(entry, source, runtime)
        if result is None:
            matched.append(index)
        else:
            mismatches.append(result)
    return MeasurementComparison(
        matched=tuple(matched),
        mismatches=tuple(mismatches),
        conflicts=tuple(sorted(conflicts)),
        skipped=tuple(skipped),
        golden_count=len(matched) + len(mismatches) + len(conflicts),
    )


def compare_measurements(
    runtime: Mapping[int, bytes],
    *,
    driver: Rim,
    vbios: Rim,
    skip_rim_indexes: Collection[int] = (),
) -> MeasurementComparison:
    """Compare report blocks (keyed by block index 1..N) against a driver and a VBIOS RIM.

    ``driver`` and ``vbios`` should be verified RIMs (``VerifiedRim.rim``); passing them the
    wrong way round is an InputError.
    """
    if driver.kind != "driver":
        raise InputError(f"the driver RIM given is a {driver.kind} RIM ({driver.version})")
    if vbios.kind != "vbios":
        raise InputError(f"the VBIOS RIM given is a {vbios.kind} RIM ({vbios.version})")
    _check_runtime(runtime)
    golden: dict[int, tuple[Source, RimMeasurement]] = {}
    conflicts: set[int] = set()
    pairs: tuple[tuple[Source, Rim], ...] = (("driver", driver), ("vbios", vbios))
    for source, rim in pairs:
        for entry in rim.measurements:
            if not entry.active:
                continue
            if entry.index in golden:
                conflicts.add(entry.index)
                continue
            golden[entry.index] = (source, entry)
    return _compare_golden(golden, conflicts, runtime, skip_rim_indexes)


def compare_single(
    runtime: Mapping[int, bytes],
    rim: Rim,
    *,
    source: Source = "bios",
    skip_rim_indexes: Collection[int] = (),
) -> MeasurementComparison:
    """Compare report blocks against one RIM alone (an NVSwitch and its BIOS RIM).

    The same rules as ``compare_measurements`` (active entries only, block = index + 1, any
    alternative with the right size matches, a missing block is a mismatch, no golden value at
    all is not ``ok``); there is no second RIM, so no conflict. ``source`` labels the mismatches.
    The RIM's kind is not checked here: the caller picked the RIM and reports a wrong kind itself.
    """
    _check_runtime(runtime)
    # parse_rim guarantees unique indexes, so one RIM cannot conflict with itself
    golden = {e.index: (source, e) for e in rim.measurements if e.active}
    return _compare_golden(golden, (), runtime, skip_rim_indexes)
