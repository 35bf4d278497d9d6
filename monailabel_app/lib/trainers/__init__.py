from .medsegdiff import MedSegDiffTrain

__all__ = ["MedSegDiffTrain"]
