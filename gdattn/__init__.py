"""gdattn: attention blocks that perform exact categorical functional GD.

The public API; see README.md. References: arXiv:2405.17248.
"""

from gdattn.attention import attention_stack
from gdattn.attention import cross_attention
from gdattn.attention import self_attention
from gdattn.checks import checked
from gdattn.checks import validate_gd_inputs
from gdattn.checks import validate_labels
from gdattn.construction import build_tokens
from gdattn.construction import gd_attention_params
from gdattn.construction import gd_transformer_logits
from gdattn.construction import gd_transformer_trajectory
from gdattn.construction import TokenLayout
from gdattn.gd import categorical_gd
from gdattn.gd import categorical_gd_trajectory
from gdattn.gd import class_probabilities
from gdattn.gd import expected_embedding
from gdattn.gd import functional_gd_trajectory
from gdattn.gd import regression_gd
from gdattn.gd import regression_gd_trajectory
from gdattn.kernels import attention_operator
from gdattn.kernels import attention_weights
from gdattn.kernels import get_kernel
from gdattn.kernels import Kernel
from gdattn.kernels import KERNELS
from gdattn.longcontext import categorical_gd_chunked
from gdattn.longcontext import kernel_apply_chunked

__version__ = "0.1.0"
