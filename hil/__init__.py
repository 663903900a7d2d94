"""hil: pytest-based hardware-in-the-loop validation for edge AI inference."""

__version__ = "0.1.0"
