"""Training the U-Net on ground truth: targets, augmentation, class-balanced loss, validation, checkpoints.

``targets`` (affinity and synapse targets, the partner zone), ``data`` (:class:`TrainData`, loading a volume or a
phantom, augmented batches), ``loop`` (:func:`train`: learning rate, loss, validation, checkpoints and resume) and
``cli`` (``python -m connectomix train``). The network and its checkpoint format live in ``connectomix.models``,
the validation metrics in ``connectomix.evaluate.boundaries``.
"""

from connectomix.train.data import TrainData, load_phantom_data, load_volume_data, sample_batch
from connectomix.train.loop import balanced_bce, evaluate, learning_rate, merge_params, train
from connectomix.train.targets import affinity_targets, partner_zone, synapse_targets

__all__ = ["TrainData", "affinity_targets", "balanced_bce", "evaluate", "learning_rate", "load_phantom_data",
           "load_volume_data", "merge_params", "partner_zone", "sample_batch", "synapse_targets", "train"]
