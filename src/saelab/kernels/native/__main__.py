"""`python -m saelab.kernels.native`: build the native kernels now (make install runs it) and say whether they load."""

from __future__ import annotations

from saelab.kernels.native.ops import threading, why_unavailable

reason = why_unavailable()
state = f"ready (threads: {threading()})" if reason is None else f"not used ({reason}); torch's operators run"
print("saelab native row kernels: " + state)
