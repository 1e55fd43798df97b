"""Speed of the language models: training tokens/s and sampling tokens/s.

Prints (not a test):
  1. training tokens/s (one jitted AdamW step on random token windows) of the
     GD LM vs GPT at the same width and depth, and the Hybrid;
  2. sampling tokens/s of `gdattn.sampling.generate` with and without the
     decode cache, for --new_tokens tokens.

  python -m experiments.bench_language                  # small CPU size
  python -m experiments.bench_language --model_dim=512 --num_heads=8 \
      --context_length=256 --batch_size=64 --vocab_size=50257   # paper size
"""

import time

import jax
import jax.numpy as jnp
import optax
from absl import app
from absl import flags
from flax import nnx

from gdattn import lm
from gdattn import lm_baselines
from gdattn import lm_ops
from gdattn import sampling

_DIM = flags.DEFINE_integer("model_dim", 64, "E")
_HEADS = flags.DEFINE_integer("num_heads", 4, "H")
_LAYERS = flags.DEFINE_integer("num_layers", 2, "K")
_SEQ = flags.DEFINE_integer("context_length", 128, "S (training windows)")
_BATCH = flags.DEFINE_integer("batch_size", 16, "B")
_VOCAB = flags.DEFINE_integer("vocab_size", 65, "V")
_KERNEL = flags.DEFINE_string("kernel", "softmax", "GD kernel")
_MLP = flags.DEFINE_bool("mlp", False, "MLP after each GD step")
_STEPS = flags.DEFINE_integer("steps", 10, "timed training steps")
_NEW = flags.DEFINE_integer("new_tokens", 256, "sampled tokens")
_SAMPLE_CONTEXT = flags.DEFINE_integer(
    "sample_context", 288, "context length of the sampling models (prompt + new)")


def _cfg(**kw):
  base = dict(vocab_size=_VOCAB.value, context_length=_SEQ.value,
              model_dim=_DIM.value, num_heads=_HEADS.value,
              num_layers=_LAYERS.value, kernel=_KERNEL.value, mlp=_MLP.value)
  base.update(kw)
  return lm.LMConfig(**base)


def train_tokens_per_s(name, cfg):
  model = lm.make_lm_model(name, cfg, nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-3, weight_decay=1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, tokens):
    def loss(m):
      return jnp.mean(lm_ops.token_nll(m.features(tokens[:, :-1]),
                                       m.output_embedding(), tokens[:, 1:]))
    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value

  tokens = jax.random.randint(jax.random.key(0), (_BATCH.value, cfg.context_length + 1),
                              0, cfg.vocab_size)
  jax.block_until_ready(step(model, optimizer, tokens))  # compile
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    value = step(model, optimizer, tokens)
  jax.block_until_ready(value)
  seconds = time.perf_counter() - start
  return _BATCH.value * cfg.context_length * _STEPS.value / seconds, lm.param_counts(model)


def main(argv):
  del argv
  print(f"devices: {jax.devices()}")
  print("1. training (tokens/s, one AdamW step, B x S tokens)")
  results = {}
  for name in lm.LM_MODELS:
    tps, counts = train_tokens_per_s(name, _cfg())
    results[name] = tps
    print(f"  {name:7s} {tps:10.0f} tokens/s  params: {counts}")
  print(f"  GD / GPT training speed: {results['gd_lm'] / results['gpt']:.2f}x")
  full = lm.param_counts(lm_baselines.GPT(_cfg(head_dim=_DIM.value), rngs=nnx.Rngs(0)))
  print(f"  GPT with full-width heads (the authors'): per layer {full['per_layer']}")

  print(f"2. sampling {_NEW.value} tokens after a 16-token prompt (batch 1)")
  cfg = _cfg(context_length=_SAMPLE_CONTEXT.value)
  prompt = jnp.zeros((1, 16), jnp.int32)
  for name in ("gd_lm", "gpt"):
    model = lm.make_lm_model(name, cfg, nnx.Rngs(0))
    speeds = {}
    for use_cache in (True, False):
      _, stats = sampling.generate(model, jax.random.key(0), prompt, _NEW.value,
                                   top_k=20, use_cache=use_cache)
      speeds[use_cache] = stats["tokens_per_s"]
    print(f"  {name:7s} cache {speeds[True]:9.1f} tokens/s, no cache"
          f" {speeds[False]:8.1f} tokens/s: {speeds[True] / speeds[False]:.1f}x")


if __name__ == "__main__":
  app.run(main)
