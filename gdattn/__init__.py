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

# The models, the training loop and the metrics.
from gdattn import configs  # pylint: disable=unused-import
from gdattn import tasks  # pylint: disable=unused-import
from gdattn.metrics import accuracy
from gdattn.metrics import compute_metrics
from gdattn.metrics import nll
from gdattn.metrics import top_k_accuracy
from gdattn.models import GD
from gdattn.models import GDMLP
from gdattn.models import ICLModelConfig
from gdattn.models import make_icl_model
from gdattn.models import Transformer
from gdattn.models import TrainedTF
from gdattn.models import trained_tf_from_gd
from gdattn import train  # the loop: gdattn.train.train(config, workdir)
from gdattn.train import load
from gdattn.train import train_and_evaluate

__version__ = "0.2.0"
