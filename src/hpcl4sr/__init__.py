"""hpcl4sr: multi-interest sequential recommendation around HPCL4SR (Zhu et al., WWW 2024)."""

__version__ = "0.1.0"
