"""Configuration of the in-context classifiers of gdattn.models.

`ICLModelConfig` holds the fields every model shares and one frozen section
per model family (config.model.<family> on the command line);
`validate_icl_config` checks them before anything is built. The factory that
turns a config into a module is `gdattn.models.make_icl_model`.
"""

import dataclasses

from gdattn import kernels


@dataclasses.dataclass(frozen=True)
class GDConfig:
  """Fields of the GD model only (the shared ones are in ICLModelConfig)."""


@dataclasses.dataclass(frozen=True)
class TrainedTFConfig:
  """config.model.trained_tf.

  Attributes:
    num_heads: self-attention heads per block.
    token_layout: "exact" (one E slot per block) or "paper" (the original
      code's layout).
  """

  num_heads: int = 2
  token_layout: str = "exact"


@dataclasses.dataclass(frozen=True)
class GDMLPConfig:
  """config.model.gdmlp.

  Attributes:
    mlp_hidden: hidden width of the MLP that rewrites E between steps.
  """

  mlp_hidden: int = 16


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """config.model.transformer (a standard pre-LN transformer baseline).

  Attributes:
    model_dim: token width.
    num_heads: attention heads per block.
    mlp_hidden: hidden width of each block's MLP.
  """

  model_dim: int = 64
  num_heads: int = 4
  mlp_hidden: int = 128


@dataclasses.dataclass(frozen=True)
class ICLModelConfig:
  """The in-context classifiers: shared fields, then one section per model.

  Attributes:
    num_layers: K, layers (= GD steps for the GD models).
    kernel: attention kernel, one of kernels.KERNELS.
    embed_dim: E of the model's class embedding W_e.
    init_scale: std of the initial weights; None = 0.002 (GD, GDMLP),
      0.002 / K (TrainedTF).
    init_kernel_scale: initial kernel scale s (GD, GDMLP).
    fix_last_class: pin W_e's last row to 0, as the original code does.
    gd: the GD model's own fields (none yet).
    trained_tf: the Trained TF's own fields.
    gdmlp: the GD-MLP's own fields.
    transformer: the transformer baseline's own fields.
  """

  num_layers: int = 1
  kernel: str = "softmax"
  embed_dim: int = 5
  init_scale: float | None = None
  init_kernel_scale: float = 1.0
  fix_last_class: bool = True
  gd: GDConfig = GDConfig()
  trained_tf: TrainedTFConfig = TrainedTFConfig()
  gdmlp: GDMLPConfig = GDMLPConfig()
  transformer: TransformerConfig = TransformerConfig()


def validate_icl_config(m: ICLModelConfig, require) -> None:
  """Checks ICLModelConfig; `require(ok, field, expected, got)` raises."""
  require(m.num_layers >= 1, "model.num_layers",
          ">= 1 (K, the number of GD steps)", m.num_layers)
  require(m.kernel in kernels.KERNELS, "model.kernel",
          f"one of {kernels.KERNELS}", m.kernel)
  require(m.embed_dim >= 1, "model.embed_dim", ">= 1", m.embed_dim)
  require(m.init_scale is None or 0 < m.init_scale < float("inf"),
          "model.init_scale", "None or a finite number > 0", m.init_scale)
  require(0 < m.init_kernel_scale < float("inf"), "model.init_kernel_scale",
          "a finite number > 0", m.init_kernel_scale)
  require(m.trained_tf.token_layout in ("exact", "paper"),
          "model.trained_tf.token_layout", "'exact' or 'paper'",
          m.trained_tf.token_layout)
  for field, value in (("trained_tf.num_heads", m.trained_tf.num_heads),
                       ("gdmlp.mlp_hidden", m.gdmlp.mlp_hidden),
                       ("transformer.model_dim", m.transformer.model_dim),
                       ("transformer.num_heads", m.transformer.num_heads),
                       ("transformer.mlp_hidden", m.transformer.mlp_hidden)):
    require(value >= 1, f"model.{field}", ">= 1", value)
  t = m.transformer
  require(t.model_dim % t.num_heads == 0, "model.transformer.model_dim",
          f"a multiple of transformer.num_heads={t.num_heads}", t.model_dim)
