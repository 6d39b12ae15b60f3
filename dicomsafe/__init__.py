"""dicomsafe: de-identify and encrypt DICOM studies — safe to share, safe to keep."""

__version__ = "0.1.0"
