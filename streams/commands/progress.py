"""Progress on stderr whatever ``--json`` says: a bar on a terminal, plain lines otherwise.

stdout is the command's answer (one JSON document under ``--json``); what a person or a log
wants to see while it runs goes to stderr, in a form that reads well where it lands.

>>> import io
>>> out = io.StringIO()
>>> p = Lines(4, "rescore → t", "msg", every_s=0.0, stream=out)
>>> p.update(2); p.update(2); p.close()
>>> out.getvalue().splitlines()
['rescore → t: 2/4 msg (50%)', 'rescore → t: 4/4 msg (100%)', 'rescore → t: done, 4 msg']
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


class Lines:
    """Plain progress for a log or a pipe: a line at most every ``every_s`` seconds, and one at the end."""

    def __init__(
        self, total: int | None, desc: str, unit: str, every_s: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream or sys.stderr
        self.n = 0
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            of = f"/{self.total:,}" if self.total is not None else ""
            print(f"{self.desc}: {self.n:,}{of} {self.unit}{share}", file=self.stream, flush=True)

    def close(self) -> None:
        print(f"{self.desc}: done, {self.n:,} {self.unit}", file=self.stream, flush=True)


def bar(total: int | None, desc: str, unit: str = "msg") -> Any:
    """A tqdm bar on a terminal's stderr, else :class:`Lines`; both take ``update(n)`` and ``close()``."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, smoothing=0.05)
    return Lines(total, desc, unit)


def say(command: str) -> Callable[[str], None]:
    """A step of ``command``, as one line on stderr: ``[drift-eval] abrupt (clinc150): 10 streams``."""
    return lambda message: print(f"[{command}] {message}", file=sys.stderr, flush=True)
