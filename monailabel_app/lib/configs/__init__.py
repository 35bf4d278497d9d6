from .medsegdiff import MedSegDiff2D, MedSegDiff3D

__all__ = ["MedSegDiff2D", "MedSegDiff3D"]
