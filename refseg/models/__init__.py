"""Models: XCiT encoders, PWAM fusion, CrossViT branch, decoder and the full RefSegModel.

    from refseg.models import build_model, load_checkpoint, RefSegModel
"""
from .refseg_model import Checkpoint, CheckpointError, RefSegModel, RefSegOutput, build_encoder, build_model, load_checkpoint

__all__ = ["RefSegModel", "RefSegOutput", "Checkpoint", "build_model", "build_encoder", "load_checkpoint", "CheckpointError"]
