"""How an ensemble's member logits become one set of logits (the layer named ``logits`` of a model
that ``training.ensemble`` builds): their mean (``keras.layers.Average``), or two stages.

Importing this module registers ``TwoStage`` with Keras, so that saved models that use it load.
"""

from __future__ import annotations

import keras
from keras import ops


def two_stage_logits(normal, split):
    """Logits whose softmax is p(normal) of ``normal``'s softmax, the rest shared between bacterial
    and viral as in ``split``'s softmax. Both are ``[..., (normal, bacterial, viral)]`` logits
    (arrays or tensors); the same members in both give ``normal``'s probabilities back."""
    pneumonia = ops.logsumexp(normal[..., 1:], axis=-1, keepdims=True)
    kind = split[..., 1:] - ops.logsumexp(split[..., 1:], axis=-1, keepdims=True)
    return ops.concatenate([normal[..., :1], pneumonia + kind], axis=-1)


@keras.saving.register_keras_serializable(package="ctai")
class TwoStage(keras.layers.Layer):
    """Called on the list of member logits: ``two_stage_logits`` of the mean of the members at
    ``normal`` (indices into the list) and the mean of those at ``split``. Members that tell
    normal from pneumonia robustly need not be the ones that best tell bacterial from viral
    (docs/model-experiments.md, "Two stages")."""

    def __init__(self, normal: list[int], split: list[int], **kwargs) -> None:
        super().__init__(**kwargs)
        if not normal or not split:
            raise ValueError("both stages need at least one member")
        self.normal, self.split = list(normal), list(split)

    def call(self, members):
        return two_stage_logits(_mean(members, self.normal), _mean(members, self.split))

    def maps(self, members):
        """Class-activation maps ``[n, h, w, class]`` of the two stages from the members' maps:
        normal's from the members that decide p(normal) (exact: its spatial mean is normal's
        logit), bacterial's and viral's from the members that split them."""
        return ops.concatenate([_mean(members, self.normal)[..., :1], _mean(members, self.split)[..., 1:]], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "normal": self.normal, "split": self.split}


def _mean(tensors: list, indices: list[int]):
    return ops.mean(ops.stack([tensors[i] for i in indices]), axis=0)
