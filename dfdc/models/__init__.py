"""Models by name: the registry, the model families, checkpoints.

- ``registry``: ``register`` / ``create_model`` / ``list_models``, each model's kind
  (``model_kind``: frame, sequence or baseline), the ``FrameModel`` contract (0-255 images ->
  normalise on the device -> pooled features -> Linear), P(FAKE), pretrained-weight loading
  helpers.
- ``efficientnet``: ``efficientnet-b0`` .. ``efficientnet-b7`` (efficientnet-pytorch).
- ``timm_backbones``: the reference studies' ImageNet backbones from timm (``xception``,
  ``inception-v3``, ``inception-resnet-v2``, ``resnet50``, ``resnet152``, ``resnext101``,
  ``vgg16``, ``tf-efficientnet-b7-ns``), and study 000's ``inception-v3-transfer``.
- ``custom``: ``tiny-cnn``, ``custom-cnn`` and Table 1's ``custom-cnn-3-constant-128`` ... (study
  000), ``simple-cnn`` / ``simple-cnn-2`` and ``lrcn-cnn`` (study 002).
- ``reseption``: ``reseption-v1`` / ``-v2`` / ``-ensemble`` (study 001).
- ``pixels``: ``pixels`` (16 px RGB, the baselines' pixel features) and ``grey-pixels`` (32 px
  grey, lighting removed: the identity embedding), weightless.
- ``sequence``: ``lstm``, ``gru``, study 000's MLPs ``mlp-3-constant-128`` ... (a face track
  through a frame backbone, then a recurrent or dense head), ``cnn-lstm`` (study 002).
- ``baseline``: ``logreg``, ``svm``, ``mlp`` (scikit-learn on frozen features).
- ``checkpoint``: save / load / fp16 export, a run's fold checkpoints.

Importing this package registers every family. Add a model with one decorated builder in
one of these files (or a new file imported below).
"""

from dfdc.models import baseline, custom, efficientnet, pixels, reseption, sequence, timm_backbones  # noqa: F401 - registers the families
from dfdc.models.checkpoint import (
    CHECKPOINT_FORMAT, CheckpointError, checkpoint_input, checkpoint_meta, checkpoint_model_config, export_half,
    fold_checkpoints, load_checkpoint, save_checkpoint, to_half, unwrap,
)
from dfdc.models.registry import (
    BASELINE, FAKE_CLASS, FRAME, KINDS, SEQUENCE, TORCH_LOAD_ERRORS, BackboneModel, FrameModel, PretrainedWeightsError,
    class_loss, create_backbone, create_model, default_input, fake_probability, frame_models, list_models, model_kind,
    model_requirements, models_of_kind, output_units, register,
)

__all__ = [
    "BASELINE", "CHECKPOINT_FORMAT", "FAKE_CLASS", "FRAME", "KINDS", "SEQUENCE", "TORCH_LOAD_ERRORS", "BackboneModel",
    "CheckpointError", "FrameModel", "PretrainedWeightsError", "checkpoint_input", "checkpoint_meta",
    "checkpoint_model_config", "class_loss", "create_backbone", "create_model", "default_input", "export_half",
    "fake_probability", "fold_checkpoints", "frame_models", "list_models", "load_checkpoint", "model_kind",
    "model_requirements", "models_of_kind", "output_units", "register", "save_checkpoint", "to_half", "unwrap",
]
