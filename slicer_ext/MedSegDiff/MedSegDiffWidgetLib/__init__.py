"""Widget-side helpers of the MedSegDiff module: they use the Slicer application (``slicer.util``, the Segment
Editor, message boxes) and the widget's controls, but import no Qt module themselves.

Kept out of ``MedSegDiff.py`` so the widget file stays small; Slicer treats every ``.py`` file next to it as a
module, hence the package.
"""

from .refine import RefineSection, openSegmentEditor

__all__ = ["RefineSection", "openSegmentEditor"]
