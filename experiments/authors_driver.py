"""Times epochs of the original authors' JAX training loop, in their own code.

Wang et al. released the JAX code behind their synthetic results
(src/experiments_jax: dm-haiku models, optax, a JAX of mid-2024). This script
is run by experiments/bench_authors.py with the Python of an environment that
has THEIR dependencies (dm-haiku, optax, ml_collections, numpy < 2 and a JAX
that still has jax.sharding.PositionalSharding, e.g. 0.4.30); it imports
nothing of gdattn and only the standard library at module level, so its stub
and patch helpers can be tested under any Python.

    python experiments/authors_driver.py --src=<their src/experiments_jax> \
        --model=gd --layers=1 [--workdir=<scratch folder>]

It sets the paper's high_dim setting up with their own `util.conf_init` (C=25
classes, d=10, N=125 context points, e=5, k=5 active classes, dist=0.1, L=2048
training contexts, minibatches of 512, softmax model kernel; recurrent layers
only at K=1, as their code requires), builds their model (`train.init`, and
for GD `data.create_weights`), runs one warm-up epoch (compilation), then
reads lines from stdin: a number E times E more epochs and prints one JSON
line {"epoch_s": [...], "draw_s": [...], "loss": ...} (draw_s: the part of
each epoch spent drawing the training contexts again); "quit" or end of input
stops it. Their own prints go to stderr; stdout carries only JSON lines.

One epoch is one pass of their outer training loop without its every-100-steps
evaluation, call for call as they wrote it:
  * Trained TF (eval.py, `run_experiment`): the 2048 training contexts drawn
    again from the same fixed key (`get_data`, their vmapped data creator run
    op by op), a key split, a permutation, and for each of the 4 minibatches
    the gather and their jitted `train.update(..., constructed=False)`;
  * GD (train.py, `pre_train_gd_classification`): the same draw, key split
    and permutation, then per minibatch value_and_grad of
    jit(`loss_fn.apply`), their jitted
    `gradient_manipulation_classification_constructed`, and the optax
    update and apply_updates outside jit.
Each epoch ends with a block on the parameters, so asynchronous dispatch does
not move work between epochs; a block after the draw times the draw apart.

Run-time stand-ins (their files are never edited):
  * modules they import at module level for unrelated image, plotting and
    notebook code are replaced by stubs before their import: tensorflow,
    keras (VGG16, preprocessing), IPython.display (`display` does nothing),
    matplotlib and pytz (`timezone` gives UTC; they only stamp a file name);
  * `util.conf_init` loads ImageNet feature files unconditionally: it runs in
    a scratch folder holding 1 x 1 placeholder .npy files of those names
    (the high_dim task never reads them);
  * their data creator shards contexts over 2 GPUs with
    PositionalSharding(mesh_utils.create_device_mesh((2, 1))); with fewer
    than 2 devices (a CPU machine) every such sharding becomes the one
    device's, which only drops the placement.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import types

# Imported by their modules at module level but used only by the ImageNet,
# plotting and notebook code paths: high_dim training never calls them.
STUBBED_MODULES = (
    "tensorflow", "keras", "keras.applications", "keras.applications.vgg16",
    "keras.preprocessing", "keras.utils", "IPython", "IPython.display",
    "pytz", "matplotlib", "matplotlib.pylab", "matplotlib.pyplot",
    "matplotlib.colors", "matplotlib.cm")
# Files `util.conf_init` loads whatever the task (ImageNet features).
PLACEHOLDER_FILES = ("train_features.npy", "train_lens.npy",
                     "val_features.npy", "val_lens.npy")
# The paper's high_dim setting, as arguments of their `util.conf_init`.
PAPER_SETTING = dict(
    data_kernel="high_dim", model_kernel="softmax", cat=25, c_size=125,
    i_size=10, e_size=5, k=5, l=10, dist=0.1, training_data_size=2048,
    minibatch_size=512)
MODELS = ("gd", "trained_tf")


class Unused:
  """Any attribute of a stubbed module: calling it returns None."""

  def __init__(self, name: str):
    self.name = name

  def __call__(self, *args, **kwargs):
    return None

  def __getitem__(self, key):
    return Unused(f"{self.name}[{key!r}]")

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return Unused(f"{self.name}.{attr}")

  def __repr__(self):
    return f"Unused({self.name!r})"


def _stub_module(name: str) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__path__ = []   # a package, so that submodules can be imported

  def getattr_(attr, name=name):
    # Dunder look-ups (the import system's) must fail as for a real module.
    if attr.startswith("__"):
      raise AttributeError(attr)
    return Unused(f"{name}.{attr}")

  module.__getattr__ = getattr_
  return module


def install_stubs(names=STUBBED_MODULES, modules=None) -> list:
  """Puts a stub module in `modules` (default sys.modules) for each name not
  already there, linked to its parent as an attribute. pytz.timezone gives
  UTC. Returns the names stubbed."""
  modules = sys.modules if modules is None else modules
  made = []
  for name in sorted(names, key=lambda n: n.count(".")):
    if name in modules:
      continue
    modules[name] = _stub_module(name)
    made.append(name)
    parent, _, child = name.rpartition(".")
    if parent and parent in modules:
      setattr(modules[parent], child, modules[name])
  if "pytz" in made:
    modules["pytz"].timezone = lambda zone: datetime.timezone.utc
  if "tensorflow" in made and "keras" in modules:
    modules["tensorflow"].keras = modules["keras"]
  return made


class OneDevicePositionalSharding:
  """PositionalSharding stand-in: any reshape gives `make_sharding()`."""

  def __init__(self, make_sharding):
    self._make_sharding = make_sharding

  def __call__(self, devices=None):
    return self

  def reshape(self, *shape):
    return self._make_sharding()


def patch_sharding(modules, make_sharding) -> list:
  """In each module that imported them, replaces PositionalSharding and
  mesh_utils so that every sharding is `make_sharding()` (one device).
  Returns 'module.name' for each replacement."""
  shim = OneDevicePositionalSharding(make_sharding)
  mesh = types.SimpleNamespace(create_device_mesh=lambda *a, **k: None)
  done = []
  for module in modules:
    for attr, value in (("PositionalSharding", shim), ("mesh_utils", mesh)):
      if hasattr(module, attr):
        setattr(module, attr, value)
        done.append(f"{module.__name__}.{attr}")
  return done


def write_placeholders(folder: str) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  for name in PLACEHOLDER_FILES:
    np.save(os.path.join(folder, name), np.zeros((1, 1), np.float32))


class AuthorsRun:
  """Their model, optimiser and data for one (model, K), and their epoch."""

  def __init__(self, src: str, model: str, layers: int, workdir: str):
    if model not in MODELS:
      raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if layers < 1:
      raise ValueError(f"layers must be >= 1, got {layers}")
    self.model = model
    sys.path.insert(0, src)
    self.stubbed = install_stubs()
    write_placeholders(workdir)
    os.chdir(workdir)
    # pylint: disable=g-import-not-at-top,import-outside-toplevel
    import jax
    import jax.numpy as jnp
    import optax
    import data as their_data
    import train as their_train
    import util as their_util
    import eval as their_eval
    # pylint: enable=g-import-not-at-top,import-outside-toplevel
    self.jax, self.optax = jax, optax
    self.t, self.e = their_train, their_eval
    self.patched = []
    if len(jax.devices()) < 2:
      device = jax.devices()[0]
      self.patched = patch_sharding(
          (their_data, their_train, their_util, their_eval),
          lambda: jax.sharding.SingleDeviceSharding(device))
    their_util.conf_init(
        "unused", num_seeds=1, num_layers=layers, recurrent=layers == 1,
        use_bias_head=False, use_bias_data=False, **PAPER_SETTING)
    their_train.change_dataloader()
    config = self.config = their_train.config
    # Their root keys (eval.py): test, val, train and W_e from PRNGKey(5).
    _, _, self.train_data_rng, w_e_rng = jax.random.split(
        jax.random.PRNGKey(5), num=4)
    self.w_e = their_data.create_w_e(w_e_rng, config.data_e_size, config.cats)
    config.seed = 0
    tf_optimizer, self.train_state, _, rng = their_train.init(False)
    if model == "trained_tf":
      self.optimizer = tf_optimizer
      self.rng, _ = jax.random.split(rng, num=2)
    else:
      self.params = their_data.create_weights(
          config.input_size, config.e_size, config.dataset_size, config.cats,
          1, jnp.array([1]), gd_deq=config.gd_deq,
          num_layers=config.num_layers, use_bias_head=config.bias_head,
          gd_plus=config.gd_plus, widening_factor=config.widening_factor,
          one_hot_emb=config.one_hot_emb, linear_approx=config.linear_approx,
          use_mlp=config.use_mlp, rng=rng)
      # Their GD optimiser (pre_train_gd_classification).
      gd_lr = config.gd_lr
      if config.gd_use_lr_schedule:
        gd_lr = optax.exponential_decay(
            init_value=config.gd_lr,
            transition_steps=config.gd_transition_steps,
            decay_rate=config.gd_lr_decay_rate,
            transition_begin=config.transition_begin,
            staircase=config.staircase)
      self.optimizer = optax.chain(
          optax.clip_by_global_norm(config.grad_clip_value_gd),
          optax.adam(gd_lr, b1=0.9, b2=0.999))
      self.opt_state = self.optimizer.init(self.params)
      self.rng, _ = jax.random.split(self.train_data_rng, 2)

  def _draw(self):
    c = self.config
    return self.e.get_data(
        self.t.data_creator, rng=self.train_data_rng, kernel=c.data_kernel,
        batch_size=c.bs_train, input_size=c.input_size,
        dataset_size=c.dataset_size, embedding_size=c.e_size, cats=c.cats,
        j=c.j, sigma=c.sigma, gamma=c.gamma, input_range=c.input_range,
        weight_scale=c.weight_scale, bias_data=c.bias_data, k=c.k,
        dist=c.dist, l=c.l, w_e=self.w_e, data=c.train_features,
        data_len=c.train_lens, examples_per_cat=c.examples_per_cat,
        min_len=c.train_min_len)

  def epoch(self) -> float:
    """One epoch of their loop; returns the last minibatch's loss."""
    jax, c = self.jax, self.config
    start = time.perf_counter()
    train_data = self._draw()
    jax.block_until_ready(train_data)
    self.draw_s = time.perf_counter() - start
    self.rng, _ = jax.random.split(self.rng, 2)
    idx = jax.random.permutation(self.rng, len(train_data[0]))
    mb = c.mb_size
    loss = None
    for i in range(len(idx) // mb):
      batch = tuple(d[idx[i * mb:(i + 1) * mb]] for d in train_data)
      if self.model == "trained_tf":
        self.train_state, metrics = self.t.update(
            self.train_state, batch, self.optimizer, constructed=False)
        loss = metrics["train_loss"]
      else:
        loss_apply = jax.jit(self.t.loss_fn.apply, static_argnums=3)
        loss, grads = jax.value_and_grad(loss_apply)(
            self.params, self.rng, batch, True)
        grads = self.t.gradient_manipulation_classification_constructed(
            grads, c.key_size, c.model_kernel == "linear")
        updates, self.opt_state = self.optimizer.update(grads, self.opt_state)
        self.params = self.optax.apply_updates(self.params, updates)
    params = (self.train_state.params if self.model == "trained_tf"
              else self.params)
    jax.block_until_ready(params)
    return float(loss)

  def timed_epochs(self, count: int) -> dict:
    """Times `count` epochs: s per epoch, of which the data draw."""
    seconds, draws, loss = [], [], None
    for _ in range(count):
      start = time.perf_counter()
      loss = self.epoch()
      seconds.append(time.perf_counter() - start)
      draws.append(self.draw_s)
    return {"epoch_s": seconds, "draw_s": draws, "loss": loss}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True,
                      help="their src/experiments_jax folder")
  parser.add_argument("--model", choices=MODELS, required=True)
  parser.add_argument("--layers", type=int, required=True)
  parser.add_argument("--workdir", default=None,
                      help="scratch folder (default: a new temporary one)")
  args = parser.parse_args(argv)
  # stdout carries only our JSON lines; their prints go to stderr.
  out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  sys.stdout = sys.stderr

  def emit(record):
    out.write(json.dumps(record) + "\n")
    out.flush()

  workdir = args.workdir or tempfile.mkdtemp(prefix="authors_driver_")
  start = time.perf_counter()
  run = AuthorsRun(os.path.abspath(args.src), args.model, args.layers,
                   workdir)
  setup_s = time.perf_counter() - start
  warm = run.timed_epochs(1)
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  emit({"event": "ready", "setup_s": setup_s, "warmup_s": warm["epoch_s"][0],
        "jax": jax.__version__, "devices": len(jax.devices()),
        "stubbed": run.stubbed, "patched": run.patched,
        "lr": float(run.config.gd_lr if args.model == "gd"
                    else run.config.lr)})
  for line in sys.stdin:
    line = line.strip()
    if not line:
      continue
    if line == "quit":
      break
    emit(run.timed_epochs(int(line)))


if __name__ == "__main__":
  main()
