from .medsegdiff import PROBABILITY_FILE_KEY, UNCERTAINTY_FILE_KEY, MedSegDiffInfer

__all__ = ["MedSegDiffInfer", "PROBABILITY_FILE_KEY", "UNCERTAINTY_FILE_KEY"]
