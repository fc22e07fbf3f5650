"""Diagonal linear network: potential, dual solver, training and GR bias."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import gradreg_optax as gro
from gradreg_optax import dln


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


@functools.lru_cache(maxsize=None)
def _small_data(seed, d, n, k):
  with jax.enable_x64(True):
    return dln.make_data(jax.random.key(seed), d=d, n=n, k=k, n_test=200,
                         dtype=jnp.float64)


def small_data(seed=0, d=40, n=20, k=3):
  return _small_data(seed, d, n, k)


def lr_for(data, alpha):
  lam = float(jnp.linalg.eigvalsh(data.x.T @ data.x).max())
  return 0.05 / (8 * lam * max(alpha ** 2, 1.0))


def min_l1(x, y):
  # min ||b||_1 s.t. X b = y as a linear program over b = u - v, u, v >= 0.
  n, d = x.shape
  out = scipy.optimize.linprog(np.ones(2 * d), A_eq=np.hstack([x, -x]),
                               b_eq=y, bounds=(0, None), method="highs")
  return out.x[:d] - out.x[d:]


class PotentialTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_q_derivative_is_arcsinh(self):
    z = jnp.linspace(-30.0, 30.0, 13)
    dq = self.variant(jax.vmap(jax.grad(dln.q)))(z)
    chex.assert_trees_all_close(dq, jnp.arcsinh(z / 2), rtol=1e-10)

  def test_q_matches_the_textbook_formula_and_its_limits(self):
    z = jnp.array([-50.0, -1.0, 0.3, 4.0, 200.0])
    naive = 2 - jnp.sqrt(4 + z ** 2) + z * jnp.arcsinh(z / 2)
    chex.assert_trees_all_close(dln.q(z), naive, rtol=1e-12)
    tiny = jnp.array([1e-6, -3e-5])
    chex.assert_trees_all_close(dln.q(tiny), tiny ** 2 / 4, rtol=1e-8)

  def test_potential_limits(self):
    b = jnp.array([1.5, -0.5, 0.0, 2.0])
    # Lazy: alpha^2 q(b / alpha^2) -> b^2 / (4 alpha^2).
    big = 1e3
    chex.assert_trees_all_close(dln.potential(b, big) * 4 * big ** 2,
                                jnp.sum(b ** 2), rtol=1e-6)
    # Rich: phi / log(1/alpha^2) -> ||b||_1.
    small = 1e-30
    ratio = dln.potential(b, small) / jnp.log(1 / small ** 2)
    chex.assert_trees_all_close(ratio, jnp.sum(jnp.abs(b)), rtol=0.03)


@pytest.mark.parametrize("alpha", [0.01, 0.3, 5.0])
def test_solver_is_feasible_and_optimal(alpha):
  data = small_data()
  sol = dln.implicit_bias_solution(data.x, data.y, alpha)
  assert float(sol.residual) < 1e-9
  chex.assert_trees_all_close(sol.beta,
                              2 * alpha ** 2 * jnp.sinh(data.x.T @ sol.nu),
                              rtol=1e-10)
  # No feasible move (along the null space of X) lowers the potential.
  null = np.linalg.svd(np.asarray(data.x))[2][data.x.shape[0]:]
  rng = np.random.default_rng(0)
  moves = null.T @ rng.normal(size=(null.shape[0], 20))
  moves *= 1e-3 * np.linalg.norm(sol.beta) / np.linalg.norm(moves, axis=0)
  phi = jax.jit(jax.vmap(dln.potential, in_axes=(1, None)))
  base = float(dln.potential(sol.beta, alpha))
  for sign in (1, -1):
    assert np.all(np.asarray(phi(sol.beta[:, None] + sign * moves, alpha))
                  >= base)


def test_solver_limits_are_min_l2_and_min_l1():
  data = small_data()
  lazy = dln.implicit_bias_solution(data.x, data.y, 100.0).beta
  chex.assert_trees_all_close(lazy, jnp.linalg.pinv(data.x) @ data.y,
                              rtol=1e-3, atol=1e-6)
  rich = dln.implicit_bias_solution(data.x, data.y, 1e-6).beta
  l1 = min_l1(np.asarray(data.x), np.asarray(data.y))
  np.testing.assert_allclose(float(jnp.abs(rich).sum()),
                             np.abs(l1).sum(), rtol=1e-3)
  np.testing.assert_allclose(np.asarray(rich), l1, atol=0.02)


def test_solver_per_coordinate_alpha_reduces_to_scalar():
  data = small_data()
  a = dln.implicit_bias_solution(data.x, data.y, 0.2).beta
  b = dln.implicit_bias_solution(data.x, data.y, jnp.full(40, 0.2)).beta
  chex.assert_trees_all_close(a, b, rtol=1e-10)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 4.0])
def test_gradient_descent_ends_at_the_solver_solution(alpha):
  data = small_data()
  lr = lr_for(data, alpha)
  out = dln.train(dln.init_params(alpha, 40, jnp.float64), (data.x, data.y),
                  lr, tol=1e-8)
  assert float(out.residual) <= 1e-8 and not bool(out.diverged)
  b = dln.beta(out.params)
  flow = dln.implicit_bias_solution(data.x, data.y, alpha).beta
  assert dln.relative_error(b, flow) < 2e-3
  # With gradient descent's own h/2 correction the match is much closer.
  a_h = dln.effective_alpha(alpha, out.c0, out.c1, 0.0, 0.0, lr)
  corrected = dln.implicit_bias_solution(data.x, data.y, a_h).beta
  assert dln.relative_error(b, corrected) < 1e-5


def test_rich_and_lazy_regimes_order_the_l1_norm():
  data = small_data()
  norms = [float(jnp.abs(dln.implicit_bias_solution(data.x, data.y, a).beta
                         ).sum()) for a in (0.01, 0.3, 10.0)]
  assert norms[0] < norms[1] < norms[2]


@pytest.mark.parametrize("method,eps", [("double_backprop", 0.1),
                                        ("forward", 1e-3),
                                        ("backward", 1e-3)])
def test_gr_solution_matches_first_order_effective_scale(method, eps):
  data = small_data()
  alpha, gamma = 1.0, 2e-4
  lr = lr_for(data, alpha)
  params = dln.init_params(alpha, 40, jnp.float64)
  plain = dln.train(params, (data.x, data.y), lr, tol=1e-9)
  tx = gro.gradient_regularization(dln.loss, gamma, method=method, eps=eps)
  out = dln.train(params, (data.x, data.y), lr, tx=tx, tol=1e-9)
  b, b0 = dln.beta(out.params), dln.beta(plain.params)
  a_gr = dln.effective_alpha(alpha, plain.c0, plain.c1, gamma,
                             dln.signed_eps(method, eps), lr)
  predicted = dln.implicit_bias_solution(data.x, data.y, a_gr).beta
  change = dln.relative_error(b, b0)
  assert change > 1e-4  # GR does move the solution
  # The first-order theory accounts for most of the move.
  assert dln.relative_error(b, predicted) < 0.3 * change


def test_mean_loss_is_the_sum_loss_with_rescaled_hyperparameters():
  data = small_data()
  n = data.x.shape[0]
  params = dln.init_params(0.5, 40, jnp.float64)
  gamma, eps, lr = 0.05, 0.5, 0.5 * lr_for(data, 0.5) * n
  mean_fn = functools.partial(dln.loss, reduction="mean")
  tx_mean = gro.gradient_regularization(mean_fn, gamma, eps=eps)
  tx_sum = gro.gradient_regularization(dln.loss, gamma / n, eps=eps / n)
  a = dln.train(params, (data.x, data.y), lr, tx=tx_mean, reduction="mean",
                max_steps=500, tol=0.0)
  b = dln.train(params, (data.x, data.y), lr / n, tx=tx_sum, max_steps=500,
                tol=0.0)
  chex.assert_trees_all_close(a.params, b.params, rtol=1e-9)


def test_train_reports_divergence():
  data = small_data()
  out = dln.train(dln.init_params(1.0, 40, jnp.float64), (data.x, data.y),
                  1.0, max_steps=1000)
  assert bool(out.diverged)


def test_train_compiles_once_for_a_sweep():
  data = small_data()
  batch = (data.x, data.y)
  tx = gro.gradient_regularization(dln.loss, 1e-3, eps=0.01)
  for alpha, lr in [(0.5, 1e-3), (1.0, 2e-3)]:  # first pass: one trace each
    for t in (None, tx):
      dln.train(dln.init_params(alpha, 40, jnp.float64), batch, lr, tx=t,
                max_steps=10)
  before = dln._train._cache_size()  # pylint: disable=protected-access
  for alpha, lr in [(2.0, 3e-3), (0.1, 5e-4)]:
    for t in (None, tx):
      dln.train(dln.init_params(alpha, 40, jnp.float64), batch, lr, tx=t,
                max_steps=10)
  assert dln._train._cache_size() == before  # pylint: disable=protected-access


def test_make_data_is_seeded_and_sparse():
  a = dln.make_data(jax.random.key(3))
  b = dln.make_data(jax.random.key(3))
  chex.assert_trees_all_close(a, b)
  assert a.x.shape == (50, 100) and int((a.beta_star != 0).sum()) == 5
  chex.assert_trees_all_close(a.y_test, a.x_test @ a.beta_star)
  noise = a.y - a.x @ a.beta_star
  assert 0.05 < float(jnp.std(noise)) < 0.2


# --- The exact effective scale along the GR trajectory -----------------------


def _gr_run(data, alpha, method, gamma, eps, frac=0.01, tol=1e-9):
  batch = (data.x, data.y)
  limit = min(float(dln.stability_limit(dln.init_params(alpha, 40, jnp.float64),
                                        batch)), 2 / (16 * _lam(data)))
  lr = frac * limit
  out = dln.train_gr(dln.init_params(alpha, 40, jnp.float64), batch, lr,
                     method=method, gamma=gamma, eps=eps, tol=tol,
                     max_steps=2_000_000)
  assert float(out.residual) <= tol and not bool(out.diverged)
  return out, lr


def _lam(data):
  return float(jnp.linalg.eigvalsh(data.x.T @ data.x).max())


@pytest.mark.parametrize("method,eps", [("forward", 0.3), ("backward", 0.1)])
def test_exact_scale_predicts_the_trained_beta_where_first_order_fails(
    method, eps):
  data = small_data()
  alpha, gamma = 1.0, 1e-3
  out, lr = _gr_run(data, alpha, method, gamma, eps)
  plain = dln.train(dln.init_params(alpha, 40, jnp.float64),
                    (data.x, data.y), lr, tol=1e-9)
  b = dln.beta(out.params)
  exact = dln.implicit_bias_solution(
      data.x, data.y,
      dln.exact_effective_alpha(alpha, out.c_gr, gamma, out.c_h, lr)).beta
  first = dln.implicit_bias_solution(
      data.x, data.y,
      dln.effective_alpha(alpha, plain.c0, plain.c1, gamma,
                          dln.signed_eps(method, eps), lr)).beta
  err_exact = dln.relative_error(b, exact)
  err_first = dln.relative_error(b, first)
  assert dln.relative_error(b, dln.beta(plain.params)) > 0.05  # GR matters
  assert err_exact < 0.02
  assert err_first > 5 * err_exact


def test_exact_exponent_reduces_to_first_order_for_small_eps():
  # Plain GD (gamma = 0), probed at w + eps grad L: to first order in eps,
  # 4 int g (g' - g) dt = eps * 2 g(0)^2 = eps * c1 (Theorem 5.1), up to
  # the O(h) of the Riemann sum.
  data = small_data()
  batch = (data.x, data.y)
  lr = lr_for(data, 1.0) / 5
  params = dln.init_params(1.0, 40, jnp.float64)
  for eps in (1e-4, -1e-4):
    out = dln.train(params, batch, lr, eps=eps, tol=1e-9)
    chex.assert_trees_all_close((out.c_gr - out.c0) / eps, out.c1, rtol=0.02,
                                atol=1e-3 * float(out.c1.max()))
  # With GR on, gamma c_gr -> gamma (c0 + eps c1) of the plain run.
  gamma, eps = 1e-5, 1e-3
  plain = dln.train(params, batch, lr, tol=1e-9)
  tx = gro.gradient_regularization(dln.loss, gamma, method="forward", eps=eps)
  out = dln.train(params, batch, lr, tx=tx, eps=eps, tol=1e-9)
  exact = dln.exact_effective_alpha(1.0, out.c_gr, gamma, out.c_h, lr)
  first = dln.effective_alpha(1.0, plain.c0, plain.c1, gamma, eps, lr)
  chex.assert_trees_all_close(jnp.log(exact), jnp.log(first), rtol=1e-2,
                              atol=1e-3 * float(jnp.abs(jnp.log(first)).max()))


def test_exact_exponent_of_the_exact_methods_is_c0_of_their_own_run():
  data = small_data()
  out, _ = _gr_run(data, 1.0, "double_backprop", 1e-3, 0.5, tol=1e-6)
  chex.assert_trees_all_close(out.c_gr, out.c0, rtol=1e-12)


def test_step_correction_of_plain_gd_is_c0():
  data = small_data()
  out = dln.train(dln.init_params(0.5, 40, jnp.float64), (data.x, data.y),
                  lr_for(data, 0.5), tol=1e-6)
  chex.assert_trees_all_close(out.c_h, out.c0, rtol=1e-10)


def test_train_gr_is_train_with_the_library_transformation():
  data = small_data()
  batch = (data.x, data.y)
  params = dln.init_params(0.7, 40, jnp.float64)
  tx = gro.gradient_regularization(dln.loss, 2e-3, method="backward", eps=0.05)
  a = dln.train(params, batch, 1e-4, tx=tx, eps=-0.05, max_steps=300, tol=0.0)
  b = dln.train_gr(params, batch, 1e-4, method="backward", gamma=2e-3,
                   eps=0.05, max_steps=300, tol=0.0)
  chex.assert_trees_all_close(a, b, rtol=1e-12)
  run = jax.vmap(lambda g, e: dln.train_gr(
      params, batch, 1e-4, method="backward", gamma=g, eps=e, max_steps=300,
      tol=0.0))
  batched = run(jnp.array([2e-3, 0.0]), jnp.array([0.05, 0.3]))
  chex.assert_trees_all_close(jax.tree.map(lambda v: v[0], batched), b,
                              rtol=1e-12)
  with pytest.raises(ValueError, match="method"):
    dln.train_gr(params, batch, 1e-4, method="central", gamma=1.0, eps=0.1)


def test_stability_limit_separates_convergence_from_divergence():
  data = small_data()
  batch = (data.x, data.y)
  alpha = 0.5
  sol = dln.implicit_bias_solution(data.x, data.y, alpha).beta
  minimum = dln.interpolating_params(sol, alpha)
  limit = float(dln.stability_limit(minimum, batch))
  key = jax.random.key(1)
  start = jax.tree.map(
      lambda w: w + 1e-6 * jax.random.normal(key, w.shape, w.dtype), minimum)

  def distance_after(h):
    out = dln.train(start, batch, h, max_steps=3000, tol=0.0)
    return float(jnp.abs(dln.beta(out.params) - sol).max())

  assert distance_after(0.95 * limit) < 1e-6
  assert not distance_after(1.05 * limit) < 1e-3  # grows, or overflows


def test_gd_conserves_the_product_of_the_weights():
  # The flow keeps w+ w- = alpha^2, so its limit is interpolating_params.
  data = small_data()
  alpha = 0.5
  out = dln.train(dln.init_params(alpha, 40, jnp.float64), (data.x, data.y),
                  0.2 * lr_for(data, alpha), tol=1e-10)
  ref = dln.interpolating_params(dln.beta(out.params), alpha)
  chex.assert_trees_all_close(out.params, ref, rtol=2e-3)


def _measured_over_paper_exponent(kappa_per_n, d=10, n=5, alpha=0.5,
                                  gamma=1e-3, eps=0.05, fraction=0.01):
  # Hand-written gradient descent on L = ||X beta - y||^2 / (kappa_per_n n):
  # plain, exact GR (a Hessian-vector product) and finite-difference GR at
  # +eps and -eps, all in this loss's own units. Each run's exponent
  # E = log alpha - log(w_+ w_-) / 2 is read off its final weights alone
  # (the flow keeps w_+ w_- = alpha_GR^2); GD's own correction cancels in
  # the differences. The paper's c0 = int (X^T r)^2 ds / n^2 and
  # c1 = (X^T r(0))^2 / (2 n^2) are summed along the GD run.
  data = small_data(seed=1, d=d, n=n, k=2)
  x, y = data.x, data.y
  kappa = kappa_per_n * n
  loss = lambda w: jnp.sum((x @ (w[0] ** 2 - w[1] ** 2) - y) ** 2) / kappa
  grad = jax.grad(loss)
  w0 = jnp.full((2, d), alpha, jnp.float64)
  lam = jnp.linalg.eigvalsh(jax.hessian(lambda v: loss(v.reshape(2, d)))(
      w0.reshape(-1)))[-1]
  h = fraction * 2 / lam

  def directions(w):
    g = grad(w)
    return (g, g + gamma * jax.jvp(grad, (w,), (g,))[1],
            g + gamma * (grad(w + eps * g) - g) / eps,
            g + gamma * (grad(w - eps * g) - g) / -eps)

  def body(carry):
    ws, c0, step = carry
    r = x @ (ws[0, 0] ** 2 - ws[0, 1] ** 2) - y
    new = jnp.stack([w - h * directions(w)[i] for i, w in enumerate(ws)])
    return new, c0 + h * (x.T @ r) ** 2 / n ** 2, step + 1

  def cond(carry):
    ws, _, step = carry
    res = jnp.linalg.norm(x @ (ws[:, 0] ** 2 - ws[:, 1] ** 2).T - y[:, None],
                          axis=0) / jnp.linalg.norm(y)
    return (res.max() > 1e-9) & (step < 200_000)

  ws, c0, steps = jax.jit(lambda: jax.lax.while_loop(
      cond, body, (jnp.stack([w0] * 4), jnp.zeros(d), 0)))()
  assert int(steps) < 200_000
  e = jnp.log(alpha) - jnp.log(ws[:, 0] * ws[:, 1]) / 2
  c1 = (x.T @ y) ** 2 / (2 * n ** 2)
  ratio = lambda a, b: float(a @ b / (b @ b))
  return (ratio(e[1] - e[0], gamma * c0),
          ratio((e[2] - e[3]) / (2 * eps), gamma * c1))


@pytest.mark.parametrize("kappa_per_n,expected", [(4, 1.0), (2, 4.0)])
def test_paper_constants_are_exact_for_the_loss_over_4n(kappa_per_n,
                                                       expected):
  # The paper's c0 and c1 are the exponent of the effective scale for the
  # loss ||X beta - y||^2 / (4n); for 1/(2n) the exponent is 4 times them.
  ratio_c0, ratio_c1 = _measured_over_paper_exponent(kappa_per_n)
  assert ratio_c0 == pytest.approx(expected, rel=0.01)
  assert ratio_c1 == pytest.approx(expected, rel=0.01)


def test_paper_scale_converts_the_sum_loss_to_the_papers_units():
  # The sum loss with (gamma, eps, h) follows the path of ||.||^2 / (4n)
  # with (gamma, eps, h) * paper_scale(n).
  data = small_data()
  batch = (data.x, data.y)
  s = dln.paper_scale(data.x.shape[0])
  paper = lambda p, b: dln.loss(p, b) / s

  def descend(loss_fn, gamma, eps, lr):
    tx = gro.gradient_regularization(loss_fn, gamma, eps=eps)

    def step(_, carry):
      p, state = carry
      u, state = tx.update(jax.grad(loss_fn)(p, batch), state, p,
                           batch=batch)
      return jax.tree.map(lambda w, v: w - lr * v, p, u), state

    params = dln.init_params(0.5, 40, jnp.float64)
    return jax.lax.fori_loop(0, 300, step, (params, tx.init(params)))[0]

  gamma, eps, lr = 1e-3, 0.05, lr_for(data, 0.5)
  chex.assert_trees_all_close(descend(dln.loss, gamma, eps, lr),
                              descend(paper, gamma * s, eps * s, lr * s),
                              rtol=1e-9)


def test_the_closed_forms_methods_are_the_registrys_gr_methods():
  for name, sign in dln._SIGN.items():  # pylint: disable=protected-access
    assert "gamma" in gro.METHODS[name].hyperparameters
    assert dln.signed_eps(name, 0.1) == sign * 0.1
