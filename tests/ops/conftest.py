"""Fixtures of the ops tests."""

from tests.ops.worker_box import box

__all__ = ["box"]
