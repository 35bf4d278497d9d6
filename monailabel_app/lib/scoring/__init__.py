from .uncertainty import UncertaintyScoring

__all__ = ["UncertaintyScoring"]
