"""Operator tooling: building and installing the gate, demo, worker setup, doctor."""
