"""Models by name: the registry, the model families, checkpoints.

- ``registry``: ``register`` / ``create_model`` / ``list_models``, the ``FrameModel``
  contract (0-255 images -> normalise on the device -> pooled features -> Linear), P(FAKE),
  pretrained-weight loading helpers.
- ``efficientnet``: ``efficientnet-b0`` .. ``efficientnet-b7`` (efficientnet-pytorch).
- ``custom``: ``tiny-cnn``.
- ``sequence``: ``lstm``, ``gru`` (a face track through a frame backbone, then a recurrent head).
- ``baseline``: ``logreg``, ``svm``, ``mlp`` (scikit-learn on frozen features) and ``pixels``.
- ``checkpoint``: save / load / fp16 export, a run's fold checkpoints.

Importing this package registers every family. Add a model with one decorated builder in
one of these files (or a new file imported below).
"""

from dfdc.models import baseline, custom, efficientnet, sequence  # noqa: F401 - registers the families
from dfdc.models.checkpoint import (
    CHECKPOINT_FORMAT, CheckpointError, checkpoint_input, export_half, fold_checkpoints, load_checkpoint,
    save_checkpoint, unwrap,
)
from dfdc.models.registry import (
    FAKE_CLASS, TORCH_LOAD_ERRORS, BackboneModel, FrameModel, PretrainedWeightsError, create_backbone, create_model,
    default_input, fake_probability, list_models, model_requirements, register,
)

__all__ = [
    "CHECKPOINT_FORMAT", "FAKE_CLASS", "TORCH_LOAD_ERRORS", "BackboneModel", "CheckpointError", "FrameModel",
    "PretrainedWeightsError", "checkpoint_input", "create_backbone", "create_model", "default_input", "export_half",
    "fake_probability", "fold_checkpoints", "list_models", "load_checkpoint", "model_requirements", "register",
    "save_checkpoint", "unwrap",
]
