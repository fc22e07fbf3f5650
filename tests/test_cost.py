"""Tests for gradreg_optax.cost: matrix-product counts of compiled steps."""

import jax
import jax.numpy as jnp
import optax
import pytest

import gradreg_optax as gro

# Counts are taken from the CPU compiler on every machine: XLA's GPU compiler
# merges some products that share an operand (e.g. 8L-4 instead of 9L-5 for
# the exact methods), so its counts are smaller and not the paper's.
CPU = jax.devices("cpu")[0]

# Tiny sizes: the count of products does not depend on them, as long as no
# dimension is 1 (XLA turns such dots into elementwise products).
WIDTH, IN_DIM, CLASSES, BATCH = 6, 5, 3, 4


@pytest.mark.parametrize("line, expected", [
    ("%dot.1 = f32[2,2]{1,0} dot(f32[2,3] %a, f32[3,2] %b), "
     "lhs_contracting_dims={1}, rhs_contracting_dims={0}", 1),
    ("%conv = f32[1,8,8,4] convolution(%x, %w), window={size=3x3}, "
     "dim_labels=b01f_01io->b01f", 1),
    ('%cublas-gemm.1 = (f32[4,4], s8[0]) custom-call(%a, %b), '
     'custom_call_target="__cublas$gemm"', 1),
    ('%gemm = (f32[4,4], s8[8]) custom-call(%a, %b), '
     'custom_call_target="__cublas$lt$matmul"', 1),
    ('%c = (f32[1,4,4,8], u8[0]) custom-call(%x, %w), '
     'custom_call_target="__cudnn$convBackwardFilter"', 1),
    ('%m = f32[4,4] custom-call(%a, %b), '
     'custom_call_target="__onednn$matmul"', 1),
    # Not products: an elementwise op whose operand is named after a dot, a
    # fusion calling a computation named after one, a header line, and a
    # custom call to something else.
    ("%add = f32[2,2] add(%dot.1, %dot.2)", 0),
    ("%fusion = f32[2,2] fusion(%p), kind=kLoop, calls=%fused_dot", 0),
    ("ENTRY %main (a: f32[2,2]) -> f32[2,2] {", 0),
    ('%t = f32[4] custom-call(%a), custom_call_target="__cub$DeviceRadixSort"',
     0),
])
def test_count_matmuls_synthetic_lines(line, expected):
  assert gro.cost.count_matmuls(line) == expected


def test_count_matmuls_counts_one_per_instruction():
  text = "\n".join([
      "HloModule m",
      "ENTRY %main {",
      "  %a = f32[2,3] parameter(0)",
      "  %d1 = f32[2,2] dot(%a, %a), lhs_contracting_dims={1}",
      "  %d2 = f32[3,3] dot(%a, %a), lhs_contracting_dims={0}",
      "  ROOT %t = (f32[2,2], f32[3,3]) tuple(%d1, %d2)",
      "}",
  ])
  assert gro.cost.count_matmuls(text) == 2


@pytest.mark.parametrize("m, k, n", [(5, 7, 3), (16, 2, 9)])
def test_step_cost_flops_of_one_matmul(m, k, n):
  # Hand count: m*n outputs, each k multiplies and k adds.
  with jax.default_device(CPU):
    cost = gro.cost.step_cost(lambda a, b: a @ b, jnp.ones((m, k)),
                              jnp.ones((k, n)))
  assert cost.matmuls == 1
  assert cost.flops == 2 * m * k * n


def _mlp(depth):
  """An L-layer MLP (biases, ReLU), its cross-entropy loss and one batch."""
  keys = jax.random.split(jax.random.PRNGKey(0), depth + 2)
  sizes = [IN_DIM] + [WIDTH] * (depth - 1) + [CLASSES]
  params = [{"w": jax.random.normal(k, (a, b)) / a**0.5, "b": jnp.zeros(b)}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
  x = jax.random.normal(keys[-2], (BATCH, IN_DIM))
  y = jax.random.randint(keys[-1], (BATCH,), 0, CLASSES)

  def loss_fn(params, batch):
    h, labels = batch
    for i, layer in enumerate(params):
      h = h @ layer["w"] + layer["b"]
      if i < len(params) - 1:
        h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, labels).mean()

  return params, (x, y), loss_fn


def _library_step_cost(depth, method):
  with jax.default_device(CPU):
    return _library_step_cost_here(depth, method)


def _library_step_cost_here(depth, method):
  params, batch, loss_fn = _mlp(depth)
  tx = optax.sgd(0.1)
  if method != "sgd":
    tx = optax.chain(gro.METHODS[method](loss_fn).tx, tx)

  def step(params, opt_state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params, batch=batch)
    return optax.apply_updates(params, updates), opt_state

  return gro.cost.step_cost(step, params, tx.init(params), batch)


# Karakida et al. (2023): SGD costs 3L products (3L - 1: the input needs no
# gradient), each extra gradient of a finite-difference method adds as many
# (F-GR, B-GR and the SAM family one, central two), and the exact
# Hessian-vector product (reverse over reverse, or forward over reverse)
# costs at most 9L.
EXACT = ("double_backprop", "jvp")


def expected(method, depth):
  sgd = 3 * depth - 1
  if method == "sgd":
    return sgd
  if method in EXACT:
    return 9 * depth - 5
  return (1 + gro.METHODS[method].extra_gradients) * sgd


@pytest.mark.parametrize("depth", [
    2, 4, pytest.param(8, marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["sgd"] + sorted(
    name for name, m in gro.METHODS.items() if m.transforms))
def test_mlp_step_matmul_counts(method, depth):
  assert _library_step_cost(depth, method).matmuls == expected(method, depth)


def test_the_closed_forms_of_the_paper():
  # The counts above for the methods of Karakida et al., written out.
  assert [expected(m, 4) for m in ("sgd", "forward", "central", "jvp")] == [
      11, 22, 33, 31]


@pytest.mark.parametrize("depth", [2, 4])
def test_hand_written_forward_gr_has_library_count(depth):
  with jax.default_device(CPU):
    params, batch, loss_fn = _mlp(depth)
  gamma, eps, lr = 0.05, 0.1, 0.1

  def hand_step(params, batch):
    g = jax.grad(loss_fn)(params, batch)
    g1 = jax.grad(loss_fn)(
        jax.tree.map(lambda p, v: p + eps * v, params, g), batch)
    u = jax.tree.map(lambda v, v1: v + gamma / eps * (v1 - v), g, g1)
    return jax.tree.map(lambda p, v: p - lr * v, params, u)

  with jax.default_device(CPU):
    hand = gro.cost.step_cost(hand_step, params, batch)
  assert hand.matmuls == 2 * (3 * depth - 1)
  assert hand.matmuls == _library_step_cost(depth, "forward").matmuls
