"""Counting a Keras model's cost: multiply-accumulates (MACs) and parameters per layer.

FLOPs here are 2 x MACs of the convolutions and dense layers, per image; biases,
activations, pooling and preprocessing are left out (under 1 % of a VGG's count). This is
the count `tl2edge prune --target-speedup` divides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str  # conv | dense
    macs: int  # per image
    params: int


def conv_macs(out_h: int, out_w: int, kh: int, kw: int, cin: int, cout: int) -> int:
    """Each output pixel of each filter is kh*kw*cin multiply-adds."""
    return out_h * out_w * kh * kw * cin * cout


def dense_macs(cin: int, cout: int) -> int:
    return cin * cout


def layer_costs(model) -> list[LayerCost]:
    """Conv2D and Dense layers of `model`, nested models included, in graph order."""
    from keras import layers

    costs: list[LayerCost] = []
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model (the VGG backbone)
            costs += layer_costs(layer)
        elif isinstance(layer, layers.Conv2D):
            if layer.groups != 1 or layer.data_format != "channels_last":
                raise ValueError(f"{layer.name}: only plain channels-last Conv2D is counted")
            _, out_h, out_w, _ = layer.output.shape
            kh, kw, cin, cout = layer.kernel.shape
            costs.append(
                LayerCost(
                    layer.name,
                    "conv",
                    conv_macs(out_h, out_w, kh, kw, cin, cout),
                    layer.count_params(),
                )
            )
        elif isinstance(layer, layers.Dense):
            cin, cout = layer.kernel.shape
            if len(layer.input.shape) != 2:
                raise ValueError(f"{layer.name}: only Dense on [batch, features] is counted")
            costs.append(
                LayerCost(layer.name, "dense", dense_macs(cin, cout), layer.count_params())
            )
    return costs


def count_flops(model) -> int:
    """2 x MACs per image of every Conv2D and Dense layer."""
    return 2 * sum(c.macs for c in layer_costs(model))


def human(n: float) -> str:
    """1234567 -> '1.23 M'."""
    if n == 0:
        return "0"
    k = min(int(math.log10(abs(n)) // 3), 4)
    return f"{n / 10 ** (3 * k):.3g} {['', 'k', 'M', 'G', 'T'][k]}".strip()
