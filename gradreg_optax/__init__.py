"""Gradient regularization as Optax gradient transformations.

Every method takes the loss function, returns an
``optax.GradientTransformationExtraArgs`` that maps the plain gradient to the
regularized one, and reads the data for its extra gradient evaluations from
the ``batch`` extra argument of ``update``.

The package, room by room (data flows down this list, never up):

* the core: ``_numerics`` (safe norms), ``_core`` (the perturbed gradient and
  the Hessian-vector products), ``_transform`` (one method made into an
  ``init``/``update`` pair: state, metrics, masks, devices, exact limits,
  hyperparameter checks), and ``method``, the public way to write a method
  (:func:`regularizer`, :class:`StepInput`, :class:`StepOutput`,
  :class:`Hyperparameter`), on which every named method is built;
* the named methods: ``perturbed`` (:func:`perturbed_gradient`),
  ``regularization`` (:func:`gradient_regularization`), ``sam``
  (:func:`sam`, :func:`gradient_norm_penalty`), the SAM family each in its
  own module (``gsam``, ``wsam``, ``friendly_sam``, ``vasso``,
  ``fisher_sam``; ``sam_on``, the mask :func:`normalization_layers`),
  ``losses`` (flooding, IGR);
* the wrappers and adapters: ``amortized`` (:func:`amortized`,
  :func:`amortized_step`, :func:`amortized_scan`),
  ``flax_utils`` (:func:`nnx_step`, :func:`apply_gradients`);
* the registry of every method by name: ``registry`` (:data:`METHODS`);
* the analysis tools: ``cost``, ``flatness``, ``dln``; and ``experiments``,
  the command-line recipes built on all of the above.
"""

from gradreg_optax import cost
from gradreg_optax import dln
from gradreg_optax import flatness
from gradreg_optax import method
from gradreg_optax._transform import Metrics
from gradreg_optax._transform import RegularizerState
from gradreg_optax._transform import metrics
from gradreg_optax.amortized import AmortizedState
from gradreg_optax.amortized import amortized
from gradreg_optax.amortized import amortized_scan
from gradreg_optax.amortized import amortized_step
from gradreg_optax.amortized import needs_recompute
from gradreg_optax.fisher_sam import fisher_sam
from gradreg_optax.flax_utils import apply_gradients
from gradreg_optax.flax_utils import nnx_loss
from gradreg_optax.flax_utils import nnx_step
from gradreg_optax.friendly_sam import friendly_sam
from gradreg_optax.gsam import gsam
from gradreg_optax.losses import flooding
from gradreg_optax.losses import igr_modified_loss
from gradreg_optax.losses import igr_rate
from gradreg_optax.losses import igr_regularizer
from gradreg_optax.method import Hyperparameter
from gradreg_optax.method import StepInput
from gradreg_optax.method import StepOutput
from gradreg_optax.method import gradient_at
from gradreg_optax.method import normalized
from gradreg_optax.method import regularizer
from gradreg_optax.perturbed import perturbed_gradient
from gradreg_optax.perturbed import weight_matrices
from gradreg_optax.registry import METHODS
from gradreg_optax.registry import Method
from gradreg_optax.registry import Regularized
from gradreg_optax.regularization import gradient_regularization
from gradreg_optax.sam import gradient_norm_penalty
from gradreg_optax.sam import sam
from gradreg_optax.sam_on import normalization_layers
from gradreg_optax.vasso import VassoState
from gradreg_optax.vasso import vasso
from gradreg_optax.wsam import wsam

__version__ = "0.2.0"

__all__ = (
    "METHODS",
    "AmortizedState",
    "Hyperparameter",
    "Method",
    "Metrics",
    "Regularized",
    "RegularizerState",
    "StepInput",
    "StepOutput",
    "VassoState",
    "amortized",
    "amortized_scan",
    "amortized_step",
    "apply_gradients",
    "cost",
    "dln",
    "fisher_sam",
    "flatness",
    "flooding",
    "friendly_sam",
    "gradient_at",
    "gradient_norm_penalty",
    "gradient_regularization",
    "gsam",
    "igr_modified_loss",
    "igr_rate",
    "igr_regularizer",
    "method",
    "metrics",
    "needs_recompute",
    "nnx_loss",
    "nnx_step",
    "normalization_layers",
    "normalized",
    "perturbed_gradient",
    "regularizer",
    "sam",
    "vasso",
    "weight_matrices",
    "wsam",
)
