"""Transfer recipes: which blocks train in each phase, at which learning rates, on which schedule.

`plan_phases(cfg)` is a pure function of the configuration (testable without TensorFlow);
`make_optimizer(phase, ...)` builds the Keras optimizer a phase compiles with.

Strategies (`--strategy`), all starting with a `head` phase (backbone frozen, lr_head):
- `feature-extraction`: nothing else, the backbone never changes;
- `fine-tune`: then the top `unfreeze_blocks` VGG blocks train at lr_finetune;
- `all-blocks`: then every block trains at lr_finetune (keras.io's transfer guide);
- `discriminative`: then every block trains, block5 at lr_finetune and each lower block at
  `block_lr_ratio` times the one above it (fastai's discriminative rates): low-level filters
  move least, so they stay close to the source while the top adapts to the target.
`--weights none` has one `scratch` phase where every layer trains.

Keras 3 optimizers have one learning rate for all variables, and scaling gradients would not
help (Adam divides by the gradient scale). So per-block rates scale the learning rate inside
the optimizer's per-variable `update_step`, which is exact for any schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tl2edge.train.config import TrainConfig

STRATEGIES = ("all-blocks", "discriminative", "fine-tune", "feature-extraction")
SCHEDULES = ("constant", "warmup-cosine")
BLOCKS = ("block1", "block2", "block3", "block4", "block5")
WARMUP_FRACTION = 0.1  # of a fine-tune phase's steps, linear from lr/10


@dataclass(frozen=True)
class Phase:
    name: str
    backbone: str | int  # see model.set_trainable: "frozen" | "all" | top N blocks
    epochs: int
    lr: float
    schedule: str = "constant"
    # Learning rate multiplier per VGG block (block1..block5); None: all 1. The head is 1.
    block_lr: tuple[float, ...] | None = None

    def describe(self) -> str:
        what = (
            self.backbone
            if isinstance(self.backbone, str)
            else f"top {self.backbone} block(s) trainable"
        )
        extra = f", {self.schedule}" if self.schedule != "constant" else ""
        if self.block_lr:
            extra += ", block lr x " + "/".join(f"{m:g}" for m in self.block_lr)
        return f"{self.epochs} epoch(s), lr={self.lr:g}{extra}, backbone {what}"


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    if cfg.from_scratch:
        return [Phase("scratch", "all", cfg.epochs_head + cfg.epochs_finetune, cfg.lr_scratch)]
    phases = [Phase("head", "frozen", cfg.epochs_head, cfg.lr_head)]
    tune = dict(epochs=cfg.epochs_finetune, lr=cfg.lr_finetune, schedule=cfg.schedule)
    if cfg.strategy == "fine-tune":
        phases.append(Phase("finetune", cfg.unfreeze_blocks, **tune))
    elif cfg.strategy == "all-blocks":
        phases.append(Phase("finetune", "all", **tune))
    elif cfg.strategy == "discriminative":
        ratio = cfg.block_lr_ratio
        multipliers = tuple(ratio ** (len(BLOCKS) - 1 - i) for i in range(len(BLOCKS)))
        phases.append(Phase("finetune", "all", block_lr=multipliers, **tune))
    return [p for p in phases if p.epochs > 0]


def lr_multiplier(path: str, block_lr: tuple[float, ...] | None) -> float:
    """The multiplier of a variable, from its path (`.../block3_conv1/kernel`); head: 1."""
    if not block_lr:
        return 1.0
    for block, m in zip(BLOCKS, block_lr, strict=True):
        if f"{block}_" in path:
            return m
    return 1.0


def learning_rate(phase: Phase, steps_per_epoch: int):
    """A float, or a Keras schedule (linear warm-up from lr/10, then cosine to 0)."""
    if phase.schedule == "constant":
        return phase.lr
    import keras

    total = max(1, phase.epochs * steps_per_epoch)
    warmup = int(total * WARMUP_FRACTION)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=phase.lr / 10 if warmup else phase.lr,
        decay_steps=total - warmup,
        warmup_target=phase.lr if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(phase: Phase, *, steps_per_epoch: int):
    """Adam for the phase; with per-block multipliers when the phase has them."""
    import keras

    lr = learning_rate(phase, steps_per_epoch)
    if not phase.block_lr:
        return keras.optimizers.Adam(lr)
    return _block_lr_adam()(phase.block_lr, learning_rate=lr)


def _block_lr_adam():
    import keras

    class BlockLRAdam(keras.optimizers.Adam):
        """Adam whose step for a variable of VGG block k uses lr x block_lr[k]."""

        def __init__(self, block_lr, **kwargs):
            super().__init__(**kwargs)
            self.block_lr = tuple(block_lr)
            self._multipliers: list[float] = []

        def build(self, variables):
            super().build(variables)
            # Indexed like the optimizer's own slots: update_step gets backend variables
            # (per replica under tf.distribute) that only _get_variable_index can map back.
            self._multipliers = [lr_multiplier(v.path, self.block_lr) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            m = self._multipliers[self._get_variable_index(variable)]
            super().update_step(gradient, variable, learning_rate * m)

        def get_config(self):
            return {**super().get_config(), "block_lr": list(self.block_lr)}

    return BlockLRAdam
