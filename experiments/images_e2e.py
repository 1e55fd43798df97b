"""Frozen CNN features vs the CNN trained end to end through GD (Fashion-MNIST).

Three runs of one config that differ only in data.features /
data.train_backbone, on the same test contexts (same images and labels):

  frozen_cnn   GD on the pretrained CNN's features (features="cnn": centred
               on the training mean, L2-normalised)
  e2e_frozen   the BackboneGD model with the pretrained CNN frozen (per-
               context centring, L2): the control for the normalisation
  e2e          the same model with the CNN trained through the GD loss

  python -m experiments.images_e2e --workdir=runs/images_e2e

Writes <workdir>/images_e2e.json; the figures are in
experiments/results/images_e2e.md.
"""

import json
import os
import time

from absl import app
from absl import flags

from gdattn import train
from gdattn.configs import images

_WORKDIR = flags.DEFINE_string("workdir", "runs/images_e2e", "output folder")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "training epochs")
_ONLY = flags.DEFINE_list("only", [], "run only these variants")
_BACKBONE_LR = flags.DEFINE_float(
    "backbone_lr_scale", 0.1, "the CNN's learning rate relative to the head's"
    " (config.optim.lr_scales.backbone)")

VARIANTS = {
    "frozen_cnn": dict(features="cnn"),
    "e2e": dict(features="end_to_end", train_backbone=True),
    "e2e_frozen": dict(features="end_to_end", train_backbone=False),
}


def config(variant: str, epochs: int):
  c = images.get_config("")
  c.models = ("gd",)
  c.data.update(dict(num_train=256, num_val=256, num_test=512, cnn_epochs=1,
                     **VARIANTS[variant]))
  c.train.batch_size = 32
  c.train.microbatch_size = 32
  c.train.eval_batch_size = 128
  c.train.num_epochs = epochs
  c.train.eval_every = max(1, epochs // 2)
  c.train.patience = None
  # The CNN's convolutions run ~15x slower inside XLA:CPU loops; the frozen
  # run gets the same execution for a like-for-like time column.
  c.train.unroll = True
  if variant.startswith("e2e"):
    # The CNN gets its own clip and Adam normalisation (under the GD head's
    # global clip of 1e-3 its gradients fall below Adam's eps) and a tenth
    # of the head's learning rate, as fine-tuning a pretrained network.
    c.optim.lr_scales = {"backbone": _BACKBONE_LR.value}
  return c


def main(_):
  out = {}
  path = os.path.join(_WORKDIR.value, "images_e2e.json")
  for variant in _ONLY.value or VARIANTS:
    start = time.time()
    res = train.train(config(variant, _EPOCHS.value),
                      os.path.join(_WORKDIR.value, variant)).results["gd"]
    m = res["members"][0]
    out[variant] = dict(test_accuracy=m["test_accuracy"],
                        test_nll=m["test_nll"], best_epoch=m["best_epoch"],
                        num_params=res["num_params"],
                        seconds=time.time() - start,
                        **{k: v for k, v in res.items()
                           if k.endswith("logreg_accuracy")
                           or k.endswith("ncm_accuracy")})
    print(variant, out[variant], flush=True)
    with open(path, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
