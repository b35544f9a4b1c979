"""leukoshift: white-blood-cell classification that keeps working in another laboratory."""

__version__ = "0.1.0"
