"""prefdyn: measure, predict and reproduce the learning dynamics of preference alignment."""

__version__ = "0.1.0"
