"""``CpuMeter`` tells a busy child process from an idle one, and from this process."""

import os
import subprocess
import sys
import time

import pytest

from streamscore.streams.commands.cpu_use import CpuMeter, children_of
from streamscore.streams.kafka.broker import stop_process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SPIN = "import time\nend = time.process_time() + 60\nwhile time.process_time() < end: pass"


def test_cores_per_process_and_children():
    busy = subprocess.Popen([sys.executable, "-c", SPIN])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)  # both started
        assert {busy.pid, idle.pid} <= set(children_of(os.getpid()))
        meter = CpuMeter.start({"idle": idle.pid})
        time.sleep(1.0)
        use = meter.cores()
    finally:
        for proc in (busy, idle):
            stop_process(proc, 5)
    # The spinning child is one of "children" (not named); the named one slept. The suite runs
    # in two processes on two cores, so the spinner may get little more than half a core.
    assert use["children"] > 0.25, use
    assert use["idle"] < 0.05, use
    # This process slept too, and the machine was at least as busy as the spinning child.
    assert use["machine_busy"] + 0.05 >= use["children"], use
    assert 0 <= use["steal"] <= use["cores"], use


def test_a_process_that_is_gone_counts_nothing():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    meter = CpuMeter.start({"gone": proc.pid})
    assert meter.cores()["gone"] == 0.0
