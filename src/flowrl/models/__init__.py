"""Flow-model backends behind one interface (flowrl.models.base.FlowModel)."""

from flowrl.models.base import FlowModel, PromptEmbeds

__all__ = ["FlowModel", "PromptEmbeds"]
