from .medsegdiff import UNCERTAINTY_FILE_KEY, MedSegDiffInfer

__all__ = ["MedSegDiffInfer", "UNCERTAINTY_FILE_KEY"]
