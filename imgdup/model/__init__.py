"""The siamese CNN: architectures, deformations, training and the embedding API."""

from .api import Embedder, WeightsCard, WeightsError, load_model
from .net import ARCHITECTURES, SiameseNet, build

__all__ = ["ARCHITECTURES", "Embedder", "SiameseNet", "WeightsCard", "WeightsError", "build", "load_model"]
