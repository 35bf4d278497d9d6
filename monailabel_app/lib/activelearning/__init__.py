from .uncertainty import MostUncertain

__all__ = ["MostUncertain"]
