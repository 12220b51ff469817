"""Where a machine's CPU went over a stretch of time: cores used per process, from ``/proc``.

On a small machine the bench's worker shares the cores with the embedded broker and with the
bench's own producer and reader. A latency figure means little without knowing how busy the
cores were, and whether the hypervisor took some of them (``steal``), so each latency window
of ``streamscore bench`` reports this beside its percentiles. Linux only; elsewhere
:meth:`CpuMeter.cores` returns an empty dict.

>>> meter = CpuMeter.start({"bench": os.getpid()})
>>> end = time.process_time() + 0.3
>>> while time.process_time() < end:
...     pass
>>> use = meter.cores()
>>> sorted(use)
['bench', 'children', 'cores', 'machine_busy', 'steal']
>>> # cores x wall time = the 0.3 CPU seconds it spun, however busy the machine was
>>> 0.25 < use["bench"] * (time.monotonic() - meter.started) < 0.45
True
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) that process ``pid`` has used; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended while we looked
        if parent == pid:
            found.append(int(entry.name))
    return found


def machine_cpu_s() -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in line[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4] - ticks[7]
    return busy * _TICK_S, ticks[7] * _TICK_S


@dataclass
class CpuMeter:
    """CPU use since :meth:`start` of some named processes, of this process's other children
    (the embedded broker, when this process started it) and of the whole machine."""

    named: dict[str, int]
    started: float = 0.0
    before: dict[int, float] = field(default_factory=dict)
    machine_before: tuple[float, float] | None = None

    @classmethod
    def start(cls, named: dict[str, int]) -> CpuMeter:
        meter = cls(named, time.monotonic())
        for pid in [*named.values(), *meter._children()]:
            used = process_cpu_s(pid)
            if used is not None:
                meter.before[pid] = used
        meter.machine_before = machine_cpu_s()
        return meter

    def _children(self) -> list[int]:
        return [p for p in children_of(os.getpid()) if p not in self.named.values()]

    def cores(self) -> dict[str, float]:
        """Cores used on average since :meth:`start`: each named process, ``children`` (this
        process's other children), ``machine_busy`` and ``steal`` (all processes; taken by the
        hypervisor), and ``cores``, the machine's CPUs."""
        machine = machine_cpu_s()
        if machine is None or self.machine_before is None:
            return {}
        elapsed = max(time.monotonic() - self.started, 1e-9)

        def since(pid: int) -> float:
            used = process_cpu_s(pid)
            # A process that started during the stretch counts from zero; one that ended, not at all.
            return 0.0 if used is None else used - self.before.get(pid, 0.0)

        use = {name: since(pid) / elapsed for name, pid in self.named.items()}
        use["children"] = sum(since(p) for p in self._children()) / elapsed
        use["machine_busy"] = (machine[0] - self.machine_before[0]) / elapsed
        use["steal"] = (machine[1] - self.machine_before[1]) / elapsed
        use = {k: round(v, 2) for k, v in use.items()}
        use["cores"] = os.cpu_count() or 1
        return use
