"""Structured filter pruning of a VGG-shaped model: importance, selection, surgery.

- Importance per conv filter: `norm` (L1 or L2 of its kernel, Li et al. 2017) or `taylor`
  (first-order Taylor estimate of the loss change when the filter's output is removed,
  |sum over positions of activation x gradient| summed over training images, Molchanov
  et al. 2017). Scores are divided by their layer's L2 norm so layers can be ranked together.
- Selection: drop the globally least important filters until the FLOPs count reaches a
  target, never leaving a layer below a floor. With a cost weight beta > 0 a filter is ranked
  by score / cost**beta, cost being the FLOPs its removal saves (its own output map plus its
  input channel of the next layer), in the spirit of Molchanov et al. 2017's FLOPs
  regularisation: a filter of an early, large-map layer is worth more FLOPs than one of a
  2x2 block-5 layer, so at equal importance it goes first. beta = 0 ranks by importance only.
- Surgery: a new dense model with fewer filters per conv layer; each kept filter's kernel and
  bias are copied, the next conv's input channels and the first Dense after global pooling
  are cut to the kept filters. Nothing is re-initialised, so keeping every filter gives the
  parent's outputs exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tl2edge.errors import UserError
from tl2edge.train.flops import conv_macs, dense_macs

METHODS = ("norm", "taylor")
NORMS = ("l1", "l2")


@dataclass(frozen=True)
class ConvSite:
    """One conv layer as the FLOPs count sees it."""

    name: str
    filters: int  # in the model this site was read from
    kh: int
    kw: int
    out_h: int
    out_w: int


def backbone_of(model):
    from tl2edge.train.model import BACKBONE

    try:
        return model.get_layer(BACKBONE)
    except ValueError as exc:
        raise UserError(
            f"the model has no `{BACKBONE}` conv base; only VGG-shaped tl2edge models can be pruned"
        ) from exc


def conv_sites(model) -> list[ConvSite]:
    """The backbone's Conv2D layers in order; UserError unless it is a plain conv/pool chain."""
    from keras import layers

    sites = []
    for layer in backbone_of(model).layers:
        if isinstance(layer, layers.InputLayer | layers.MaxPooling2D):
            continue
        if not isinstance(layer, layers.Conv2D) or layer.groups != 1:
            raise UserError(
                f"layer {layer.name} ({layer.__class__.__name__}) of the conv base is not a plain "
                "Conv2D or MaxPooling2D; only VGG-shaped conv chains can be pruned"
            )
        _, out_h, out_w, _ = layer.output.shape
        kh, kw, _, cout = layer.kernel.shape
        sites.append(ConvSite(layer.name, int(cout), int(kh), int(kw), int(out_h), int(out_w)))
    if not sites:
        raise UserError("the conv base has no Conv2D layer to prune")
    return sites


def head_dense(model):
    """The first Dense after the conv base (fed by global pooling): its rows follow the last
    conv's filters."""
    from keras import layers

    after = model.layers[model.layers.index(backbone_of(model)) + 1 :]
    dense = next((layer for layer in after if isinstance(layer, layers.Dense)), None)
    between = after[: after.index(dense)] if dense is not None else after
    if dense is None or not all(
        isinstance(layer, layers.GlobalAveragePooling2D | layers.GlobalMaxPooling2D)
        for layer in between
    ):
        raise UserError("the head is not global pooling -> Dense; cannot prune this model")
    return dense


def flops_counter(model) -> Callable[[dict[str, int]], int]:
    """`count(filters) -> FLOPs` for the model with `filters[name]` filters per conv layer,
    without building it (the selection calls it once per dropped filter)."""
    sites = conv_sites(model)
    dense = head_dense(model)
    after = model.layers[model.layers.index(dense) + 1 :]
    fixed_macs = sum(dense_macs(*layer.kernel.shape) for layer in after if hasattr(layer, "kernel"))
    units = int(dense.kernel.shape[1])
    in_channels = int(backbone_of(model).input.shape[-1])

    def count(filters: dict[str, int]) -> int:
        macs, cin = fixed_macs, in_channels
        for s in sites:
            cout = filters[s.name]
            macs += conv_macs(s.out_h, s.out_w, s.kh, s.kw, cin, cout)
            cin = cout
        return 2 * (macs + dense_macs(cin, units))

    return count


# -- importance --------------------------------------------------------------------------


def norm_scores(model, *, norm: str = "l1") -> dict[str, np.ndarray]:
    """L1 or L2 norm of each filter's kernel."""
    if norm not in NORMS:
        raise UserError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    backbone = backbone_of(model)
    out = {}
    for site in conv_sites(model):
        kernel = np.asarray(backbone.get_layer(site.name).kernel)
        flat = kernel.reshape(-1, kernel.shape[-1])
        out[site.name] = (
            np.abs(flat).sum(axis=0) if norm == "l1" else np.sqrt((flat**2).sum(axis=0))
        )
    return out


def taylor_scores(
    model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 32
) -> dict[str, np.ndarray]:
    """First-order Taylor importance on labelled images x (uint8 or float, 0..255)."""
    import keras
    import tensorflow as tf

    backbone = backbone_of(model)
    names = [s.name for s in conv_sites(model)]
    head = model.layers[model.layers.index(backbone) + 1 :]
    before = model.layers[1 : model.layers.index(backbone)]
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    scores = {n: np.zeros(backbone.get_layer(n).kernel.shape[-1], np.float64) for n in names}
    for i in range(0, len(x), batch_size):
        images = tf.convert_to_tensor(x[i : i + batch_size], tf.float32)
        labels = tf.convert_to_tensor(y[i : i + batch_size])
        with tf.GradientTape() as tape:
            h = images
            for layer in before:
                h = layer(h, training=False)
            acts = []
            for layer in backbone.layers[1:]:
                h = layer(h, training=False)
                if layer.name in scores:
                    tape.watch(h)
                    acts.append(h)
            for layer in head:
                h = layer(h, training=False)
            loss = loss_fn(labels, h) * tf.cast(tf.shape(images)[0], tf.float32)
        grads = tape.gradient(loss, acts)
        for name, a, g in zip(names, acts, grads, strict=True):
            # Loss change if the filter's map were zeroed, per image, to first order.
            per_image = tf.abs(tf.reduce_sum(a * g, axis=(1, 2)))
            scores[name] += tf.reduce_sum(per_image, axis=0).numpy()
    return scores


def normalize(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each layer's scores divided by their L2 norm, so layers can be ranked together."""
    return {k: v / (np.linalg.norm(v) + 1e-12) for k, v in scores.items()}


# -- selection -------------------------------------------------------------------------


def choose_filters(
    scores: dict[str, np.ndarray],
    count: Callable[[dict[str, int]], int],
    *,
    target_flops: float,
    floor: dict[str, int],
    cost_weight: float = 0.0,
    channel_multiple: int = 1,
) -> dict[str, np.ndarray]:
    """Indices of the filters to keep per layer (sorted). Filters are dropped a group at a
    time, each time the group with the lowest mean normalised score / cost**cost_weight over
    all layers (cost: the FLOPs dropping it saves with the current filter counts), until
    count(...) <= target_flops or every layer is at its floor.

    A group is `channel_multiple` filters in a layer whose filter count is a multiple of it
    (and at least twice it), so such layers keep a multiple of it; one filter elsewhere.
    """
    ranked = normalize(scores)
    # Within a layer every filter costs the same, so each layer drops in score order and only
    # the next group of each layer competes.
    order = {k: np.argsort(v, kind="stable") for k, v in ranked.items()}
    filters = {k: len(v) for k, v in ranked.items()}
    group = {
        k: channel_multiple if n % channel_multiple == 0 and n >= 2 * channel_multiple else 1
        for k, n in filters.items()
    }
    lowest = {k: max(floor[k], group[k]) for k in ranked}
    lowest = {k: -(-lowest[k] // group[k]) * group[k] for k in ranked}  # up to a multiple
    dropped = dict.fromkeys(ranked, 0)
    flops = count(filters)
    while flops > target_flops:
        best = None
        for name in ranked:
            n = group[name]
            if filters[name] - n < lowest[name]:
                continue
            next_ = order[name][dropped[name] : dropped[name] + n]
            after = count({**filters, name: filters[name] - n})
            score = float(np.mean(ranked[name][next_]))
            key = (score / float(flops - after) ** cost_weight, name)
            if best is None or key < best[0]:
                best = (key, after)
        if best is None:  # every layer at its floor
            break
        (_, name), flops = best
        filters[name] -= group[name]
        dropped[name] += group[name]
    return {k: np.sort(order[k][dropped[k] :]) for k in ranked}


def floors(model, parent_filters: dict[str, int], min_keep: float) -> dict[str, int]:
    """At least `min_keep` of the parent's filters (and at least one) stay in every layer."""
    return {s.name: max(1, math.ceil(min_keep * parent_filters[s.name])) for s in conv_sites(model)}


# -- surgery ---------------------------------------------------------------------------


def prune_model(model, keep: dict[str, np.ndarray]):
    """A new model with only the `keep[name]` filters of each conv layer, weights copied."""
    import keras

    from tl2edge.train.model import build_model

    backbone = backbone_of(model)
    sites = conv_sites(model)
    missing = [s.name for s in sites if s.name not in keep]
    if missing:
        raise ValueError(f"no filters chosen for {', '.join(missing)}")
    for s in sites:
        idx = np.asarray(keep[s.name])
        if len(idx) == 0 or np.any(idx < 0) or np.any(idx >= s.filters):
            raise ValueError(f"{s.name}: bad filter indices (1..{s.filters} filters, 0-based)")

    inp = keras.Input(backbone.input.shape[1:], name=backbone.layers[0].name)
    h = inp
    for layer in backbone.layers[1:]:
        config = layer.get_config()
        if layer.name in keep:
            config["filters"] = len(keep[layer.name])
        h = layer.__class__.from_config(config)(h)
    new_backbone = keras.Model(inp, h, name=backbone.name)

    dense = head_dense(model)
    _, size, _, _ = model.input.shape
    dropout = next((layer.rate for layer in model.layers if hasattr(layer, "rate")), 0.0)
    pruned = build_model(
        model.output.shape[-1],
        image_size=int(size),
        dense_units=int(dense.units),
        dropout=float(dropout),
        backbone=new_backbone,
    )

    prev = np.arange(backbone.input.shape[-1])
    for s in sites:
        kernel, bias = backbone.get_layer(s.name).get_weights()
        idx = np.asarray(keep[s.name])
        new_backbone.get_layer(s.name).set_weights([kernel[:, :, prev][..., idx], bias[idx]])
        prev = idx
    kernel, bias = dense.get_weights()
    pruned.get_layer(dense.name).set_weights([kernel[prev], bias])
    for layer in model.layers:
        if layer is backbone or layer is dense or not layer.weights:
            continue
        pruned.get_layer(layer.name).set_weights(layer.get_weights())
    return pruned


def filter_counts(model) -> dict[str, int]:
    return {s.name: s.filters for s in conv_sites(model)}
