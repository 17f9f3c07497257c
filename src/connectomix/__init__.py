"""connectomix: reproducible connectome reconstruction from serial-section electron microscopy."""

__version__ = "0.1.0"
