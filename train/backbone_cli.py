"""`tl2edge backbone RUN_DIR OUT.npz`: save a run's VGG16 backbone as a compact weights file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tl2edge.errors import UserError

log = logging.getLogger("tl2edge.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished run dir (the --out of `tl2edge train`)")
    parser.add_argument(
        "out", help="output .npz (float16, compressed); use it with `tl2edge train --weights OUT`"
    )
    parser.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"{out}: the backbone file must end in .npz")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    from tl2edge.rundir import RunDir

    model_file = RunDir.open(args.run_dir).model_path
    from tl2edge.train.model import BACKBONE, load_inference_model
    from tl2edge.train.weights import save_backbone_npz

    path = save_backbone_npz(load_inference_model(model_file).get_layer(BACKBONE), out)
    log.info("backbone saved to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return 0
