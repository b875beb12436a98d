"""ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition") in Keras 3.

Depth 18 and 34 use basic blocks, 50 uses bottleneck blocks; ``width`` is the number of
filters of the first stage (64 in the paper), doubled at each of the four stages.
"""

from __future__ import annotations

import keras
from keras import layers

STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _conv_bn(x, filters: int, kernel: int, stride: int = 1, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal")(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def _shortcut(x, filters: int, stride: int):
    if stride == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, stride, relu=False)


def _basic_block(x, filters: int, stride: int):
    y = _conv_bn(x, filters, 3, stride)
    y = _conv_bn(y, filters, 3, relu=False)
    return layers.ReLU()(layers.Add()([_shortcut(x, filters, stride), y]))


def _bottleneck_block(x, filters: int, stride: int):
    y = _conv_bn(x, filters, 1)
    y = _conv_bn(y, filters, 3, stride)
    y = _conv_bn(y, filters * 4, 1, relu=False)
    return layers.ReLU()(layers.Add()([_shortcut(x, filters * 4, stride), y]))


def build_resnet(depth: int = 18, width: int = 64, input_size: int = 224, classes: int = 3,
                 dropout: float = 0.2) -> keras.Model:
    """A ResNet that maps a ``input_size``² one-channel image to ``classes`` logits."""
    if depth not in STAGES:
        raise ValueError(f"depth must be one of {sorted(STAGES)}, not {depth}")
    kind, repeats = STAGES[depth]
    block = _basic_block if kind == "basic" else _bottleneck_block
    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = _conv_bn(inputs, width, 7, 2)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, count in enumerate(repeats):
        for i in range(count):
            x = block(x, width * 2**stage, 2 if (i == 0 and stage > 0) else 1)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    logits = layers.Dense(classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"resnet{depth}_w{width}_{input_size}px")
