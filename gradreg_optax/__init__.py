"""Gradient regularization as Optax gradient transformations.

Every method takes the loss function, returns an
``optax.GradientTransformationExtraArgs`` that maps the plain gradient to the
regularized one, and reads the data for its extra gradient evaluations from
the ``batch`` extra argument of ``update``.
"""

from gradreg_optax import cost
from gradreg_optax import dln
from gradreg_optax import flatness
from gradreg_optax._base import RegularizerState
from gradreg_optax.flax_utils import apply_gradients
from gradreg_optax.flax_utils import nnx_loss
from gradreg_optax.losses import flooding
from gradreg_optax.losses import igr_modified_loss
from gradreg_optax.losses import igr_rate
from gradreg_optax.losses import igr_regularizer
from gradreg_optax.perturbed import perturbed_gradient
from gradreg_optax.perturbed import weight_matrices
from gradreg_optax.regularization import METHODS
from gradreg_optax.regularization import gradient_regularization
from gradreg_optax.sam import gradient_norm_penalty
from gradreg_optax.sam import sam

__version__ = "0.1.0"

__all__ = (
    "METHODS",
    "RegularizerState",
    "apply_gradients",
    "cost",
    "dln",
    "flatness",
    "flooding",
    "gradient_norm_penalty",
    "gradient_regularization",
    "igr_modified_loss",
    "igr_rate",
    "igr_regularizer",
    "nnx_loss",
    "perturbed_gradient",
    "sam",
    "weight_matrices",
)
