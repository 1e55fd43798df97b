"""In-context image classification (the paper's ImageNet experiment, offline).

Variants (`--config=gdattn/configs/images.py[:VARIANT]`):

  (default)  CPU demo on Fashion-MNIST (Debian package dataset-fashion-mnist):
             centred PCA-64 features, L2-normalised; 5-way 10-shot contexts
             with labels permuted per context; 2048 fixed training contexts,
             1024 val / 1024 test; GD K=1 (softmax kernel) and the Trained
             TF, 100 epochs. Linear probing and the nearest class mean on the
             same test contexts are reported beside them.
             python -m experiments.main --config=gdattn/configs/images.py --workdir=runs/images
  smoke      seconds: scikit-learn's 8x8 digits (offline in the wheel).
  smoke_e2e  smoke with the CNN backbone inside GD, trained end to end
             through the in-context loss (data.features=end_to_end, random
             backbone init); the same config with data.features=cnn is the
             frozen-backbone twin.
  e2e        the demo with the CNN (pretrained on the training classes)
             inside GD K=1 and fine-tuned end to end through it; the CNN
             is its own optimiser group at a tenth of GD's learning rate
             (optim.lr_scales). experiments/images_e2e.py compares it with
             the frozen CNN.
  glyphs     ~1000 glyph classes rendered from matplotlib's fonts, 90/10
             held-out classes: test contexts use classes never seen in
             training (the paper's 900/100 ImageNet split).
  paper      the authors' protocol for a feature store of ImageNet VGG16
             features (--config.data.data_dir=features.npz): raw 512-d
             features, no normalisation, 2048 contexts per split, 5000
             epochs, early stopping on validation NLL.

References: arXiv:2405.17248 (in-context image classification).
"""

from ml_collections import config_dict

from gdattn.configs import synthetic


def get_config(arg: str = "") -> config_dict.ConfigDict:
  variant = arg or "demo"
  variants = ("demo", "smoke", "smoke_e2e", "e2e", "glyphs", "paper")
  if variant not in variants:
    raise ValueError(
        f"config arg must be one of {', '.join(variants)}; got {arg!r}")
  c = synthetic.get_config("paper")  # the model, optim and train sections
  c.task = "image_icl"
  c.models = ("gd", "trained_tf")
  c.num_seeds = 1
  c.data = config_dict.ConfigDict(dict(
      dataset="fashion_mnist", data_dir=config_dict.placeholder(str),
      cache_dir=config_dict.placeholder(str), features="pca", pca_dim=64,
      centre=True, l2=True, cnn_epochs=1, cnn_feature_dim=64,
      backbone_init="pretrained", train_backbone=True, ways=5,
      shots=10, num_queries=1, split="same_classes", held_out_fraction=0.1,
      eval_fraction=0.3, num_train=2048, num_val=1024, num_test=1024,
      fresh_contexts=False, steps_per_epoch=4, glyph_classes=1000,
      glyph_images_per_class=20, image_size=config_dict.placeholder(int),
      test_corruption=config_dict.placeholder(str), test_severity=1.0,
      test_dataset=config_dict.placeholder(str), seed=0))
  c.model.embed_dim = 5
  c.optim.learning_rate = 1e-2
  c.train.num_epochs = 100
  c.train.eval_every = 10
  c.train.patience = 5
  if variant in ("smoke", "smoke_e2e"):
    c.data.dataset = "digits"
    c.data.pca_dim = 16
    c.data.shots = 4
    c.data.num_train = 64
    c.data.num_val = 32
    c.data.num_test = 32
    c.train.batch_size = 16
    c.train.microbatch_size = 8
    c.train.num_epochs = 6
    c.train.eval_every = 2
    c.train.eval_batch_size = 32
    c.train.progress = False
    c.optim.learning_rate = 5e-2
  if variant == "smoke_e2e":
    c.models = ("gd",)
    c.data.features = "end_to_end"
    c.data.backbone_init = "random"
    c.data.cnn_feature_dim = 16
    c.data.l2 = False
    c.train.num_epochs = 4
    # The CNN is clipped and Adam-normalised apart from the GD head: under
    # one global clip its gradients fall below Adam's eps (gdattn.steps).
    c.optim.lr_scales = {"backbone": 1.0}
    c.train.unroll = True  # XLA:CPU runs convolutions in loops ~15x slower
  elif variant == "e2e":
    c.models = ("gd",)
    c.data.features = "end_to_end"
    c.optim.lr_scales = {"backbone": 0.1}
    c.train.unroll = True  # XLA:CPU runs convolutions in loops ~15x slower
  elif variant == "glyphs":
    c.data.dataset = "glyphs"
    c.data.split = "held_out_classes"
    c.data.held_out_fraction = 0.1
    # Held-out classes give val 70% / test 30% of their images: 40 per class
    # leaves 12 test images, enough for 10 shots + 1 query (20 left 6).
    c.data.glyph_images_per_class = 40
  elif variant == "paper":
    c.data.dataset = "feature_store"
    c.data.features = "raw"
    c.data.centre = False
    c.data.l2 = False
    c.data.num_val = 2048
    c.data.num_test = 2048
    c.optim.learning_rate = 1e-3
    c.train.num_epochs = 5000
    c.train.eval_every = 100
    c.train.patience = None
  return c
