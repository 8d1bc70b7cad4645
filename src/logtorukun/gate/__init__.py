"""The worker-side gate: the forced command every SSH request goes through.

Standard library only (a test enforces it), so it runs on any worker's Python 3.11+.
"""

GATE_VERSION = "0.1.0"
