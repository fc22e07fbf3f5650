r"""Diagonal linear network: implicit bias of gradient descent and of GR.

The model of Woodworth et al. (*Kernel and Rich Regimes in Overparametrized
Models*, COLT 2020) used by Karakida et al. (*Understanding Gradient
Regularization in Deep Learning*, ICML 2023, Sec. 5):

.. math::

  f(x) = \sum_i (w_{+,i}^2 - w_{-,i}^2) x_i = \langle \beta, x \rangle,
  \qquad L(w) = \sum_\mu (y^\mu - f(x^\mu))^2,

started from ``w_+ = w_- = alpha``. If gradient flow interpolates
(``X beta = y``), its limit is ``argmin phi_alpha(beta)`` over the
interpolating ``beta``, with

.. math::

  \phi_\alpha(\beta) = \sum_i \alpha_i^2 q(\beta_i / \alpha_i^2), \qquad
  q(z) = 2 - \sqrt{4 + z^2} + z \operatorname{arcsinh}(z / 2),

close to ``||beta||_2^2`` for large ``alpha`` (lazy regime) and to
``||beta||_1`` for small ``alpha`` (rich regime). With gradient
regularization ``dw/dt = -grad L - gamma Delta R(eps)`` the flow keeps this
form with a per-coordinate effective scale (Karakida et al., Theorem 5.1)

.. math::

  \alpha_{GR} = \alpha \circ \exp(-\gamma (c_0 + \varepsilon c_1) + O(\gamma^2,
  \gamma\varepsilon^2)), \quad c_0 = 4 \int_0^\infty g(t)^2 dt, \quad
  c_1 = 2 g(0)^2,

where ``g = dL/dbeta`` (elementwise squares), ``eps > 0`` is F-GR and
``eps < 0`` B-GR. For the loss ``||X beta - y||^2 / (4n)`` these are exactly
the paper's ``c_0 = int (X^T r)^2 ds / n^2`` and ``c_1 = (X^T r(0))^2 /
(2 n^2)`` (``r = X beta - y``): its ``gamma``, ``eps`` and time (the step
``h``) are those of the sum loss used here times :func:`paper_scale`,
``4 n``. Gradient descent with a finite step ``h`` adds ``h / 2`` to
``gamma`` in ``c_0`` (its implicit gradient regularization, Barrett &
Dherin, 2021).

Along the actual GR trajectory the scale is exact, to all orders in
``gamma`` and ``eps`` (derivation in ``docs/dln_theory.md``):

.. math::

  \alpha_{GR} = \alpha \circ \exp\Big(-4\gamma \int_0^\infty g(t) \circ
  g'(t) \, dt\Big), \qquad g' = \frac{\partial L}{\partial \beta}\Big|_{
  \beta(w + \varepsilon \nabla_w L(w))},

with ``g'`` the gradient at the displaced point of the finite difference;
:func:`train` accumulates ``c_gr = 4 int g g' dt`` and
:func:`exact_effective_alpha` applies it. For ``eps -> 0`` it is ``c_0``
along the GR trajectory; to first order in ``eps`` and ``gamma`` it is the
theorem's ``c_0 + eps c_1``.

All functions are pure JAX; enable float64 (``jax.experimental.enable_x64``)
for small ``alpha``, where the potential and the dual solver need the range.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradreg_optax import regularization

Array = jax.Array


class Data(NamedTuple):
  """A sparse regression problem.

  Attributes:
    x: training inputs, ``(n, d)``.
    y: training targets, ``(n,)``.
    x_test: test inputs, ``(n_test, d)``.
    y_test: noiseless test targets ``x_test @ beta_star``, ``(n_test,)``.
    beta_star: the sparse ground truth, ``(d,)``.
  """

  x: Array
  y: Array
  x_test: Array
  y_test: Array
  beta_star: Array


def make_data(key: Array, *, d: int = 100, n: int = 50, k: int = 5,
              noise_std: float = 0.1, n_test: int = 1000,
              dtype: Any = None) -> Data:
  r"""Sparse Gaussian regression, the setting of Karakida et al. (2023).

  ``x ~ N(0, I_d)``, ``beta*`` has ``k`` non-zero entries equal to ``1`` at
  random coordinates, and ``y ~ N(<beta*, x>, noise_std^2)`` (the paper's
  ``N(., 0.01)`` is ``noise_std = 0.1``); ``d = 100, n = 50, k = 5``.

  Args:
    key: PRNG key (the data are a deterministic function of it).
    d: input dimension.
    n: number of training samples.
    k: number of non-zero entries of ``beta*``.
    noise_std: standard deviation of the label noise.
    n_test: number of test samples (noiseless targets).
    dtype: floating dtype (default: JAX's default float).

  Returns:
    A :class:`Data`.

  Example:
    >>> import jax
    >>> from gradreg_optax import dln
    >>> data = dln.make_data(jax.random.key(0), d=10, n=5, k=2)
    >>> data.x.shape, data.y.shape, int((data.beta_star != 0).sum())
    ((5, 10), (5,), 2)
  """
  dtype = dtype or jnp.zeros(()).dtype
  kx, kn, ks, kt = jax.random.split(key, 4)
  support = jax.random.permutation(ks, d)[:k]
  beta_star = jnp.zeros(d, dtype).at[support].set(1.0)
  x = jax.random.normal(kx, (n, d), dtype)
  y = x @ beta_star + noise_std * jax.random.normal(kn, (n,), dtype)
  x_test = jax.random.normal(kt, (n_test, d), dtype)
  return Data(x, y, x_test, x_test @ beta_star, beta_star)


def init_params(alpha: Any, d: int, dtype: Any = None) -> dict[str, Array]:
  r"""``w_+ = w_- = alpha`` (a scalar or one scale per coordinate).

  Then ``beta = w_+^2 - w_-^2 = 0`` at initialization.

  Args:
    alpha: initialization scale, ``> 0``, scalar or shape ``(d,)``.
    d: input dimension.
    dtype: floating dtype (default: JAX's default float).

  Returns:
    ``{"w_plus": ..., "w_minus": ...}``, each of shape ``(d,)``.

  Example:
    >>> from gradreg_optax import dln
    >>> dln.init_params(0.5, 3)["w_plus"]
    Array([0.5, 0.5, 0.5], dtype=float32)
  """
  dtype = dtype or jnp.zeros(()).dtype
  w = jnp.broadcast_to(jnp.asarray(alpha, dtype), (d,))
  return {"w_plus": w, "w_minus": w}


def beta(params: dict[str, Array]) -> Array:
  r"""The linear predictor ``beta = w_+^2 - w_-^2``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> dln.beta({"w_plus": jnp.array([2.0]), "w_minus": jnp.array([1.0])})
    Array([3.], dtype=float32)
  """
  return params["w_plus"] ** 2 - params["w_minus"] ** 2


def loss_beta(b: Array, batch: tuple[Array, Array], *,
              reduction: str = "sum") -> Array:
  r"""``L = sum_mu (y^mu - <beta, x^mu>)^2`` as a function of ``beta``.

  Args:
    b: ``beta``, shape ``(d,)``.
    batch: ``(x, y)``.
    reduction: ``"sum"`` (the paper's loss) or ``"mean"`` (divided by ``n``).

  Returns:
    The scalar loss.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> dln.loss_beta(jnp.array([1.0, 0.0]), (jnp.eye(2), jnp.array([0.0, 2.0])))
    Array(5., dtype=float32)
  """
  x, y = batch
  sq = jnp.sum((y - x @ b) ** 2)
  if reduction == "sum":
    return sq
  if reduction == "mean":
    return sq / y.shape[0]
  raise ValueError(f"Unknown reduction {reduction!r}; expected 'sum' or 'mean'.")


def loss(params: dict[str, Array], batch: tuple[Array, Array], *,
         reduction: str = "sum") -> Array:
  r"""The network's loss ``L(w) = sum_mu (y^mu - f(x^mu))^2``.

  Takes ``(params, batch)`` as the library's transformations expect; use
  ``functools.partial(loss, reduction="mean")`` for the mean.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> params = dln.init_params(1.0, 2)
    >>> dln.loss(params, (jnp.eye(2), jnp.array([1.0, 2.0])))  # beta = 0
    Array(5., dtype=float32)
  """
  return loss_beta(beta(params), batch, reduction=reduction)


def q(z: Array) -> Array:
  r"""``q(z) = 2 - sqrt(4 + z^2) + z arcsinh(z / 2)`` (Woodworth et al., 2020).

  ``q(z) ~ z^2 / 4`` near 0 and ``~ |z| log|z|`` for large ``|z|``;
  ``q'(z) = arcsinh(z / 2)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> dln.q(jnp.array([0.0, 0.2]))  # about z^2/4 = 0.01
    Array([0.        , 0.00999...], dtype=float32)
  """
  # 2 - sqrt(4 + z^2) rewritten without the cancellation at small z.
  return z * jnp.arcsinh(z / 2) - z ** 2 / (2 + jnp.sqrt(4 + z ** 2))


def potential(b: Array, alpha: Any) -> Array:
  r"""``phi_alpha(beta) = sum_i alpha_i^2 q(beta_i / alpha_i^2)``.

  Args:
    b: ``beta``, shape ``(d,)``.
    alpha: scale, scalar or shape ``(d,)``.

  Returns:
    The scalar potential.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> b = jnp.array([1.0, -2.0])
    >>> float(dln.potential(b, 100.0) * 4 * 100.0 ** 2)  # lazy: ||b||_2^2
    4.99...
  """
  a2 = jnp.asarray(alpha) ** 2
  return jnp.sum(a2 * q(b / a2))


class BiasSolution(NamedTuple):
  """Output of :func:`implicit_bias_solution`.

  Attributes:
    beta: ``argmin phi_alpha(beta) s.t. X beta = y``.
    nu: the dual variable, ``beta = 2 alpha^2 sinh(X^T nu)``.
    residual: ``||X beta - y|| / ||y||``.
    iterations: Newton iterations used.
  """

  beta: Array
  nu: Array
  residual: Array
  iterations: Array


def implicit_bias_solution(x: Array, y: Array, alpha: Any, *,
                           max_iter: int = 200, tol: float = 1e-10
                           ) -> BiasSolution:
  r"""``argmin_beta phi_alpha(beta)`` subject to ``X beta = y``, by dual Newton.

  Since ``q'(z) = arcsinh(z/2)``, stationarity of the Lagrangian gives
  ``beta = 2 alpha^2 sinh(X^T nu)``, and ``nu`` minimizes the convex dual

  .. math::

    F(\nu) = \sum_i 2 \alpha_i^2 \cosh((X^\top \nu)_i) - \langle y, \nu
    \rangle, \quad \nabla F = X\beta(\nu) - y, \quad
    \nabla^2 F = X \operatorname{diag}(2\alpha^2\cosh(X^\top\nu)) X^\top.

  Damped Newton (step halved until ``F`` decreases) from ``nu = 0``; this is
  the limit of gradient flow on the diagonal network (Woodworth et al., 2020,
  Theorem 1). Needs ``n <= d`` and ``X`` of full row rank. Use float64 for
  ``alpha`` below about ``0.1``.

  Args:
    x: ``(n, d)`` inputs.
    y: ``(n,)`` targets.
    alpha: scale ``> 0``, scalar or ``(d,)``.
    max_iter: maximum Newton iterations.
    tol: stop when ``||X beta - y|| <= tol * ||y||``.

  Returns:
    A :class:`BiasSolution`.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> x, y = jnp.array([[1.0, 1.0]]), jnp.array([2.0])
    >>> dln.implicit_bias_solution(x, y, 1.0).beta  # symmetric: (1, 1)
    Array([1., 1.], dtype=float32)
  """
  a2 = jnp.broadcast_to(jnp.asarray(alpha, x.dtype) ** 2, (x.shape[1],))
  y_norm = jnp.linalg.norm(y)

  def dual(nu):
    return jnp.sum(2 * a2 * jnp.cosh(x.T @ nu)) - y @ nu

  def beta_of(nu):
    return 2 * a2 * jnp.sinh(x.T @ nu)

  def cond(carry):
    nu, it = carry
    res = jnp.linalg.norm(x @ beta_of(nu) - y)
    return (res > tol * y_norm) & (it < max_iter)

  def body(carry):
    nu, it = carry
    z = x.T @ nu
    grad = x @ (2 * a2 * jnp.sinh(z)) - y
    hess = (x * (2 * a2 * jnp.cosh(z))) @ x.T
    step = jnp.linalg.solve(hess, grad)
    f0 = dual(nu)

    def shrink(t):
      return t * 0.5

    # Backtracking keeps the full Newton step near the optimum and stops
    # overshooting where cosh is steep (small alpha, large |X^T nu|).
    # Increases within rounding of F are accepted: near the optimum F is
    # flat to machine precision while the residual still falls quadratically.
    slack = 64 * jnp.finfo(x.dtype).eps * (jnp.abs(f0) + 1)
    t = jax.lax.while_loop(
        lambda t: (dual(nu - t * step) > f0 + slack) & (t > 1e-12), shrink,
        jnp.ones((), x.dtype))
    return nu - t * step, it + 1

  nu, it = jax.lax.while_loop(cond, body, (jnp.zeros_like(y), 0))
  b = beta_of(nu)
  return BiasSolution(b, nu, jnp.linalg.norm(x @ b - y) / y_norm, it)


class TrainResult(NamedTuple):
  """Output of :func:`train`.

  Attributes:
    params: final parameters.
    steps: steps taken.
    loss: final training loss.
    residual: ``||X beta - y|| / ||y||`` at the end.
    c0: ``4 h sum_t g_t^2`` with ``g = dL/dbeta`` along the trajectory
      (the Riemann sum of ``c_0 = 4 int g^2 dt`` with time ``h`` per step).
    c1: ``2 g(0)^2``.
    c_gr: ``4 h sum_t g_t g'_t``, with ``g'`` the gradient in ``beta`` at
      the displaced point ``w + eps grad_w L`` (the exact exponent per unit
      ``gamma``; equal to ``c0`` for ``eps = 0``).
    c_h: ``4 h sum_t (a_t^2 + b_t^2) / 2``, with ``w_+ <- w_+ (1 - 2 h a)``
      and ``w_- <- w_- (1 + 2 h b)`` the actual steps (``a = b = g`` for
      plain GD, where ``c_h = c0``): gradient descent's own correction to
      the scale is ``exp(-(h/2) c_h)``.
    diverged: the loss became non-finite.
  """

  params: dict[str, Array]
  steps: Array
  loss: Array
  residual: Array
  c0: Array
  c1: Array
  c_gr: Array
  c_h: Array
  diverged: Array


def train(params: dict[str, Array], batch: tuple[Array, Array],
          learning_rate: float, *, tx: optax.GradientTransformation | None = None,
          eps: float = 0.0, reduction: str = "sum",
          max_steps: int = 1_000_000, tol: float = 1e-6) -> TrainResult:
  r"""Gradient descent ``w <- w - h * tx(grad L(w))`` until interpolation.

  ``tx`` is a gradient transformation applied before the step (e.g.
  ``gradreg_optax.gradient_regularization``, which receives ``batch`` as its
  extra argument); ``None`` is plain gradient descent. The run stops when
  ``||X beta - y|| <= tol ||y||``, after ``max_steps``, or when the loss is no
  longer finite. The whole loop is one ``lax.while_loop`` under ``jit``.

  Along the way it accumulates the implicit-bias coefficients of the module
  docstring for the loss being minimized: ``c0 = 4 h sum_t g_t^2``,
  ``c1 = 2 g_0^2`` and the exact ``c_gr = 4 h sum_t g_t g'_t``, with
  ``g = dL/dbeta`` and ``g'`` the same at ``w + eps grad_w L(w)``.

  Args:
    params: initial parameters (:func:`init_params`).
    batch: ``(x, y)``.
    learning_rate: the step ``h`` (small: the flow is the target).
    tx: the transformation producing the update direction, or ``None``.
    eps: the signed finite-difference step of ``tx`` (see
      :func:`signed_eps`: ``+eps`` F-GR, ``-eps`` B-GR, ``0`` for the exact
      methods and plain GD); only ``c_gr`` depends on it.
    reduction: ``"sum"`` or ``"mean"`` (see :func:`loss_beta`).
    max_steps: step budget.
    tol: relative residual that counts as interpolation.

  Returns:
    A :class:`TrainResult`.

  Example:
    >>> import jax
    >>> from gradreg_optax import dln
    >>> data = dln.make_data(jax.random.key(0), d=20, n=10, k=2)
    >>> out = dln.train(dln.init_params(1.0, 20), (data.x, data.y), 1e-3,
    ...                 tol=1e-4)
    >>> bool(out.residual <= 1e-4), bool(out.diverged)
    (True, False)
  """
  # One compiled loop per (tx, reduction): the default tx is a module
  # constant, and the losses are built inside the jitted function, so
  # repeated calls (sweeps over data, alpha, learning rate or step budget)
  # do not retrace.
  tx = _PLAIN_GD if tx is None else optax.with_extra_args_support(tx)
  dtype = batch[0].dtype
  return _train(params, batch, tx, reduction, jnp.asarray(learning_rate, dtype),
                max_steps, tol, jnp.asarray(eps, dtype))


def train_gr(params: dict[str, Array], batch: tuple[Array, Array],
             learning_rate: Any, *, method: str, gamma: Any, eps: Any,
             reduction: str = "sum", max_steps: int = 1_000_000,
             tol: float = 1e-6) -> TrainResult:
  r""":func:`train` with ``gradient_regularization(loss, gamma, method, eps)``.

  ``gamma``, ``eps`` and ``learning_rate`` are traced, so the function can
  be ``jax.vmap``-ed over them as well as over ``params`` and ``batch``
  (one compilation per ``method`` and shapes); ``c_gr`` is taken at the
  method's own displaced point (:func:`signed_eps`).

  Args:
    params: initial parameters (:func:`init_params`).
    batch: ``(x, y)``.
    learning_rate: the step ``h``.
    method: ``"forward"``, ``"backward"``, ``"double_backprop"`` or
      ``"jvp"``.
    gamma: GR strength, ``>= 0``.
    eps: finite-difference step, ``> 0`` (ignored by the exact methods).
    reduction: ``"sum"`` or ``"mean"``.
    max_steps: step budget.
    tol: relative residual that counts as interpolation.

  Returns:
    A :class:`TrainResult`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> data = dln.make_data(jax.random.key(0), d=20, n=10, k=2)
    >>> run = jax.vmap(lambda e: dln.train_gr(
    ...     dln.init_params(1.0, 20), (data.x, data.y), 1e-3,
    ...     method="forward", gamma=1e-3, eps=e, tol=1e-4))
    >>> out = run(jnp.array([0.01, 0.1]))
    >>> out.residual.shape, bool(out.diverged.any())
    ((2,), False)
  """
  if method not in _SIGN:
    raise ValueError(f"train_gr: `method` must be one of {sorted(_SIGN)}, "
                     f"got {method!r}.")
  dtype = batch[0].dtype
  return _train_gr(params, batch, jnp.asarray(learning_rate, dtype),
                   jnp.asarray(gamma, dtype), jnp.asarray(eps, dtype), method,
                   reduction, max_steps, tol)


_PLAIN_GD = optax.with_extra_args_support(optax.identity())
# The sign of the displaced point w + sign * eps * grad L of each method of
# gro.METHODS that this closed form covers. It is the theory's, not the
# transformation's: the exact exponent 4 int g g' dt holds for one displaced
# point (F-GR, B-GR) or none (the exact methods); the central difference has
# two, and the other methods of the registry are not gradient regularization.
_SIGN = {"forward": 1.0, "backward": -1.0, "double_backprop": 0.0, "jvp": 0.0}


@functools.partial(jax.jit, static_argnames=("method", "reduction"))
def _train_gr(params, batch, h, gamma, eps, method, reduction, max_steps, tol):
  # Traced gamma and eps pass the constructor's checks unchecked; the
  # public wrapper has validated the method.
  tx = regularization.gradient_regularization(
      functools.partial(loss, reduction=reduction), gamma, method=method,
      eps=eps)
  return _loop(params, batch, tx, reduction, h, max_steps, tol,
               _SIGN[method] * eps)


@functools.partial(jax.jit, static_argnames=("tx", "reduction"))
def _train(params, batch, tx, reduction, h, max_steps, tol, eps):
  return _loop(params, batch, tx, reduction, h, max_steps, tol, eps)


def _loop(params, batch, tx, reduction, h, max_steps, tol, eps):
  x, y = batch
  y_norm = jnp.linalg.norm(y)
  fn = functools.partial(loss, reduction=reduction)
  grad_beta = jax.grad(lambda b_: loss_beta(b_, batch, reduction=reduction))
  state = tx.init(params)

  def residual(p):
    return jnp.linalg.norm(x @ beta(p) - y) / y_norm

  def cond(carry):
    _, _, step, _, _, _, res = carry
    return (res > tol) & (step < max_steps) & jnp.isfinite(res)

  def body(carry):
    p, s, step, acc, acc_gr, acc_h, _ = carry
    g_beta = grad_beta(beta(p))
    grads = jax.grad(fn)(p, batch)
    # g' at the finite difference's displaced point (g itself for eps = 0).
    shifted = jax.tree.map(lambda w, gw: w + eps * gw, p, grads)
    g_shift = grad_beta(beta(shifted))
    updates, s = tx.update(grads, s, p, batch=batch)
    # The step's rates in beta units, w_+ *= 1 - 2 h a, w_- *= 1 + 2 h b
    # (a = b = g for plain GD): their squares are GD's own correction.
    a = updates["w_plus"] / (2 * p["w_plus"])
    b = -updates["w_minus"] / (2 * p["w_minus"])
    p = jax.tree.map(lambda w, u: w - h * u, p, updates)
    return (p, s, step + 1, acc + g_beta ** 2, acc_gr + g_beta * g_shift,
            acc_h + (a ** 2 + b ** 2) / 2, residual(p))

  acc0 = jnp.zeros_like(params["w_plus"])
  p, _, steps, acc, acc_gr, acc_h, res = jax.lax.while_loop(
      cond, body, (params, state, 0, acc0, acc0, acc0, residual(params)))
  g0 = grad_beta(beta(params))
  final = fn(p, batch)
  return TrainResult(p, steps, final, res, 4 * h * acc, 2 * g0 ** 2,
                     4 * h * acc_gr, 4 * h * acc_h, ~jnp.isfinite(final))


def effective_alpha(alpha: Any, c0: Array, c1: Array, gamma: float,
                    eps: float = 0.0, learning_rate: float = 0.0) -> Array:
  r"""First-order effective scale ``alpha_GR`` (Karakida et al., 2023, Thm 5.1).

  .. math::

    \alpha_{GR} = \alpha \circ \exp(-(\gamma + h/2) c_0 - \gamma\varepsilon
    c_1),

  with ``eps > 0`` for F-GR, ``eps < 0`` for B-GR and ``0`` for the exact
  methods (double backprop, jvp) and, to this order, the central difference.
  The ``h/2`` term is gradient descent's own implicit regularization (the
  step ``h`` acts as GR with ``gamma = h/2``); leave ``learning_rate = 0`` for
  the flow. ``c0``, ``c1`` as returned by :func:`train`.

  Args:
    alpha: initialization scale (scalar or ``(d,)``).
    c0: ``4 int g^2 dt``, shape ``(d,)``.
    c1: ``2 g(0)^2``, shape ``(d,)``.
    gamma: GR strength.
    eps: signed finite-difference step.
    learning_rate: gradient-descent step ``h``.

  Returns:
    ``alpha_GR``, shape ``(d,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> dln.effective_alpha(1.0, jnp.array([1.0]), jnp.array([2.0]), 0.5, 0.5)
    Array([0.36787...], dtype=float32)
  """
  return jnp.asarray(alpha) * jnp.exp(
      -(gamma + learning_rate / 2) * c0 - gamma * eps * c1)


def exact_effective_alpha(alpha: Any, c_gr: Array, gamma: float,
                          c_h: Array | None = None,
                          learning_rate: float = 0.0) -> Array:
  r"""Exact effective scale along the GR trajectory (``docs/dln_theory.md``).

  .. math::

    \alpha_{GR} = \alpha \circ \exp(-\gamma c_{GR} - (h/2) c_h),
    \qquad c_{GR} = 4 \int g \circ g'(\varepsilon) \, dt,

  exact for the gradient flow of F-GR (``eps > 0``), B-GR (``eps < 0``) and
  the exact methods (``eps = 0``) whenever it interpolates. The ``h/2`` term
  is gradient descent's own correction, second order in ``h`` per step
  (leave ``c_h`` out, or ``learning_rate = 0``, for the flow). ``c_gr`` and
  ``c_h`` from the *same* GR run (:func:`train` with its ``eps``, or
  :func:`train_gr`).

  Args:
    alpha: initialization scale (scalar or ``(d,)``).
    c_gr: ``4 int g g' dt``, shape ``(d,)``.
    gamma: GR strength.
    c_h: :attr:`TrainResult.c_h` of the same run, for the step correction.
    learning_rate: gradient-descent step ``h``.

  Returns:
    ``alpha_GR``, shape ``(d,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> dln.exact_effective_alpha(1.0, jnp.array([-2.0, 2.0]), 0.5)
    Array([2.71828..., 0.36787...], dtype=float32)
  """
  expo = gamma * jnp.asarray(c_gr)
  if c_h is not None:
    expo = expo + learning_rate / 2 * c_h
  return jnp.asarray(alpha) * jnp.exp(-expo)


def stability_limit(params: dict[str, Array], batch: tuple[Array, Array], *,
                    reduction: str = "sum") -> Array:
  r"""``2 / lambda_max`` of the Hessian of ``L`` in ``w`` at ``params``.

  Gradient descent at step ``h`` is stable near a minimum iff ``h`` is below
  this. The Hessian is ``2d x 2d``, formed exactly.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> # L = (w+^2 - w-^2)^2 at w = 1: Hessian [[8, -8], [-8, 8]].
    >>> float(dln.stability_limit(dln.init_params(1.0, 1),
    ...                           (jnp.ones((1, 1)), jnp.zeros(1))))
    0.125
  """
  d = params["w_plus"].shape[0]

  def fn(v):
    return loss({"w_plus": v[:d], "w_minus": v[d:]}, batch,
                reduction=reduction)

  v = jnp.concatenate([params["w_plus"], params["w_minus"]])
  return 2 / jnp.linalg.eigvalsh(jax.hessian(fn)(v))[-1]


def interpolating_params(b: Array, alpha: Any) -> dict[str, Array]:
  r"""The weights of the flow's limit with predictor ``b`` from scale ``alpha``.

  Gradient flow keeps ``w_+ w_- = alpha^2`` for each coordinate, so the
  limit with ``w_+^2 - w_-^2 = b`` is ``w_+^2 = (b + sqrt(b^2 + 4 alpha^4))/2``,
  ``w_-^2 = alpha^4 / w_+^2``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> p = dln.interpolating_params(jnp.array([3.0]), 1.0)
    >>> dln.beta(p), p["w_plus"] * p["w_minus"]
    (Array([3.], dtype=float32), Array([1.], dtype=float32))
  """
  a4 = jnp.broadcast_to(jnp.asarray(alpha, b.dtype) ** 4, b.shape)
  plus2 = (b + jnp.sqrt(b ** 2 + 4 * a4)) / 2
  return {"w_plus": jnp.sqrt(plus2), "w_minus": jnp.sqrt(a4 / plus2)}


def signed_eps(method: str, eps: float) -> float:
  """The signed step of the theory: ``+eps`` F-GR, ``-eps`` B-GR, else 0.

  Example:
    >>> from gradreg_optax import dln
    >>> dln.signed_eps("backward", 0.1)
    -0.1
  """
  return _SIGN.get(method, 0.0) * eps


def paper_scale(n: int) -> int:
  r"""``4 n``: the sum loss's ``gamma``, ``eps`` and ``h`` times this are the
  paper's.

  Karakida et al. (2023, Theorem 5.1) give ``c_0 = int (X^T r)^2 ds / n^2``
  and ``c_1 = (X^T r(0))^2 / (2 n^2)``; with ``g = dL/dbeta`` these are the
  module's ``4 int g^2 dt`` and ``2 g(0)^2`` exactly when
  ``L = ||X beta - y||^2 / (4n)``, whose path with ``(gamma, eps, h)`` is
  the sum loss's with ``(gamma, eps, h) / (4 n)`` (``docs/dln_theory.md``).
  The exponents ``gamma c_0`` and ``gamma eps c_1`` are the same in both.

  Args:
    n: the number of training samples.

  Returns:
    The factor ``4 n``.

  Example:
    >>> from gradreg_optax import dln
    >>> 1e-3 * dln.paper_scale(50)  # the sum loss's gamma = 1e-3
    0.2
  """
  return 4 * n


def generalization_error(b: Array, data: Data) -> Array:
  r"""Mean squared test error ``mean (<beta - beta*, x>)^2`` on noiseless data.

  Example:
    >>> import jax
    >>> from gradreg_optax import dln
    >>> data = dln.make_data(jax.random.key(0), d=4, n=2, k=1)
    >>> float(dln.generalization_error(data.beta_star, data))
    0.0
  """
  return jnp.mean((data.x_test @ b - data.y_test) ** 2)


def relative_error(a: Array, b: Array) -> float:
  """``||a - b|| / ||b||`` as a Python float.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import dln
    >>> dln.relative_error(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]))
    1.0
  """
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b))
               / np.linalg.norm(np.asarray(b)))
