"""What the module needs to know from ``GET /info/``, read once when connecting."""

from dataclasses import dataclass, field

from .conversions import label_colors, label_items
from .params import declared_parameters

__all__ = ["DEFAULT_MODEL", "DEFAULT_STRATEGY", "ServerInfo"]

DEFAULT_MODEL = "medsegdiff"
DEFAULT_STRATEGY = "uncertainty"


@dataclass
class ServerInfo:
    """Summary of a MONAI Label app's ``/info/`` answer.

    Attributes:
        name: app name.
        version: app version string.
        models: ``{name: model dict}`` of the inference models.
        trainers: ``{name: trainer dict}``.
        strategies: ``{name: strategy dict}`` (active learning).
        raw: the full ``/info/`` answer.
    """

    name: str = ""
    version: str = ""
    models: dict = field(default_factory=dict)
    trainers: dict = field(default_factory=dict)
    strategies: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, info):
        """Build from the ``/info/`` dict."""
        return cls(
            name=str(info.get("name", "")),
            version=str(info.get("version", "")),
            models=dict(info.get("models") or {}),
            trainers=dict(info.get("trainers") or {}),
            strategies=dict(info.get("strategies") or {}),
            raw=info,
        )

    def default_model(self):
        """``medsegdiff`` when served, else the first segmentation model, else None."""
        if DEFAULT_MODEL in self.models:
            return DEFAULT_MODEL
        segmentation = [n for n, m in self.models.items() if m.get("type", "segmentation") == "segmentation"]
        return segmentation[0] if segmentation else next(iter(self.models), None)

    def default_strategy(self):
        """``uncertainty`` when offered, else the first strategy, else None."""
        if DEFAULT_STRATEGY in self.strategies:
            return DEFAULT_STRATEGY
        return next(iter(self.strategies), None)

    def model(self, name):
        """The model dict; ``ValueError`` naming the model when the server does not serve it."""
        if name not in self.models:
            raise ValueError(f"model {name!r} is not served by this server; available: {sorted(self.models)}")
        return self.models[name]

    def labels(self, model):
        """``{name: value}`` of the model's labels (background left out)."""
        return dict(label_items(self.model(model).get("labels") or self.raw.get("labels") or {}))

    def colors(self, model):
        """``{name: (r, g, b)}`` from the model's ``label_colors``, or the fallback palette."""
        return label_colors(self.labels(model), self.model(model).get("label_colors"))

    def parameters(self, model):
        """Declared inference parameters (``ParameterSpec``) of the model."""
        return declared_parameters(self.model(model))

    def train_stats(self, model):
        """Latest ``train_stats`` the server keeps for the model (may be empty)."""
        return (self.raw.get("train_stats") or {}).get(model) or {}

    def summary(self):
        """One paragraph for the status line of the module."""
        lines = [f"{self.name or 'MONAI Label app'} {self.version}".strip()]
        lines.append("Models: " + (", ".join(sorted(self.models)) or "none"))
        model = self.default_model()
        if model:
            lines.append("Labels: " + (", ".join(self.labels(model)) or "none"))
        lines.append("Strategies: " + (", ".join(sorted(self.strategies)) or "none"))
        lines.append("Trainers: " + (", ".join(sorted(self.trainers)) or "none"))
        return "\n".join(lines)
