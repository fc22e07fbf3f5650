"""A small decoder-only transformer language model trained with SAM and F-GR.

``python -m gradreg_optax.experiments.transformer`` trains a byte-level
transformer (Flax NNX: causal multi-head self-attention, pre-LayerNorm
blocks, Dropout) on English text that ships with Python itself, once with
AdamW alone and once with each gradient-regularization method in front of
AdamW, and reports the validation loss curves:

    python -m gradreg_optax.experiments.transformer \\
        --out docs/results/transformer_lm \\
        --figure docs/figures/transformer_lm.png

The corpus is ``pydoc_data.topics.topics``, the help texts that ``help()``
shows for Python's keywords and language topics (about 465,000 characters of
English prose with code examples, in the standard library of every CPython
installation; its exact content depends on the Python version, so the run
records the version and a hash). Nothing is downloaded. The text is cut into
chunks of 4096 bytes and every tenth chunk is held out for validation.

Methods come from the registry, ``gro.METHODS[name](loss_fn, **hyper)``, so
any name works (``--methods adamw sam:rho=0.1 forward:gamma=0.02,eps=0.1
jvp``); ``adamw`` is the registry's ``sgd``, the base optimizer alone. Every
regularized step goes through :func:`gradreg_optax.nnx_step`, whose extra
gradient evaluations reuse the dropout masks of the caller's own pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradreg_optax as gro
from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import _report
from gradreg_optax.experiments import spec as spec_lib

MODULE = "gradreg_optax.experiments.transformer"
# The registry calls the base optimizer alone "sgd"; here it is AdamW.
BASELINE = "adamw"
DEFAULT_METHODS = (BASELINE, "sam", "forward")

# GPT-2's initialization: small normal weights, so that the residual stream
# starts close to the embeddings.
_INIT = nnx.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape of :class:`TransformerLM`.

  Attributes:
    vocab_size: number of tokens (256 for bytes).
    block_size: longest context; the position embedding has this many rows.
    dim: width of the residual stream.
    num_heads: attention heads (``dim`` must be a multiple).
    num_layers: transformer blocks.
    mlp_ratio: hidden width of each block's MLP over ``dim``.
    dropout: rate of every Dropout (embeddings, attention weights, residual
      branches).
  """

  vocab_size: int = 256
  block_size: int = 64
  dim: int = 128
  num_heads: int = 4
  num_layers: int = 3
  mlp_ratio: int = 4
  dropout: float = 0.1


def _linear(din: int, dout: int, rngs: nnx.Rngs, **kwargs: Any
            ) -> nnx.Linear:
  return nnx.Linear(din, dout, kernel_init=_INIT, rngs=rngs, **kwargs)


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention in which position ``t`` sees positions ``<= t``.

  Dropout acts on the attention weights and on the output; each Dropout
  owns its RNG stream, forked from ``rngs`` at construction.
  """

  def __init__(self, dim: int, num_heads: int, dropout: float, *,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"dim ({dim}) must be a multiple of num_heads "
                       f"({num_heads}).")
    self.num_heads = num_heads
    # No bias: the keys' bias adds the same logit to every key a query sees,
    # to which softmax is blind, so its gradient is zero up to rounding, and
    # AdamW would turn that rounding noise into full-size steps.
    self.qkv = _linear(dim, 3 * dim, rngs, use_bias=False)
    self.out = _linear(dim, dim, rngs)
    self.attention_dropout = nnx.Dropout(dropout, rngs=rngs)
    self.residual_dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    h = self.num_heads
    q, k, v = jnp.moveaxis(self.qkv(x).reshape(b, t, 3, h, d // h), 2, 0)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // h)
    causal = jnp.tril(jnp.ones((t, t), bool))
    # The most negative finite number rather than -inf: a fully masked row
    # cannot occur (the diagonal is always visible), and -inf would put NaNs
    # into the Hessian products of the exact methods.
    logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    weights = self.attention_dropout(jax.nn.softmax(logits, axis=-1))
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)
    return self.residual_dropout(self.out(y))


class MLP(nnx.Module):
  """Two linear layers with a GELU between them, then Dropout."""

  def __init__(self, dim: int, hidden: int, dropout: float, *,
               rngs: nnx.Rngs):
    self.up = _linear(dim, hidden, rngs)
    self.down = _linear(hidden, dim, rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.dropout(self.down(jax.nn.gelu(self.up(x))))


class Block(nnx.Module):
  """A pre-LayerNorm block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(config.dim, rngs=rngs)
    self.attention = CausalSelfAttention(config.dim, config.num_heads,
                                         config.dropout, rngs=rngs)
    self.ln2 = nnx.LayerNorm(config.dim, rngs=rngs)
    self.mlp = MLP(config.dim, config.mlp_ratio * config.dim, config.dropout,
                   rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(self.ln1(x))
    return x + self.mlp(self.ln2(x))


class TransformerLM(nnx.Module):
  """A decoder-only transformer: next-token logits for every position.

  Token and position embeddings, ``num_layers`` pre-LayerNorm blocks, a
  final LayerNorm and an output projection (not tied to the token
  embedding). Training mode (dropout on) by default; evaluate through
  ``nnx.view(model, deterministic=True)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> config = ModelConfig(block_size=8, dim=16, num_heads=2, num_layers=1)
    >>> model = TransformerLM(config, rngs=nnx.Rngs(params=0, dropout=1))
    >>> model(jnp.zeros((2, 8), jnp.int32)).shape
    (2, 8, 256)
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.token_embedding = nnx.Embed(config.vocab_size, config.dim,
                                     embedding_init=_INIT, rngs=rngs)
    self.position_embedding = nnx.Embed(config.block_size, config.dim,
                                        embedding_init=_INIT, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs=rngs)
                            for _ in range(config.num_layers)])
    self.ln_f = nnx.LayerNorm(config.dim, rngs=rngs)
    self.head = _linear(config.dim, config.vocab_size, rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    t = tokens.shape[-1]
    if t > self.config.block_size:
      raise ValueError(f"{t} tokens exceed block_size "
                       f"{self.config.block_size}.")
    x = self.token_embedding(tokens) + self.position_embedding(jnp.arange(t))
    x = self.dropout(x)
    for block in self.blocks:
      x = block(x)
    return self.head(self.ln_f(x))


def lm_loss(model: TransformerLM, batch: tuple[jax.Array, jax.Array]
            ) -> jax.Array:
  """Mean next-token cross-entropy (nats); ``batch = (inputs, targets)``."""
  inputs, targets = batch
  logits = model(inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         targets).mean()


def decay_mask(params: Any) -> Any:
  """AdamW's weight-decay mask: true on the kernels of the linear layers.

  Biases and LayerNorm scales and offsets are left out, as usual: decaying
  them pulls the normalization towards zero output and the biases towards
  zero for no regularizing benefit. The token and position embeddings are
  left out as well (as in minGPT): an embedding row is a lookup table entry,
  not a linear map, and a row receives gradient only when its token (or
  position) occurs, so decay would shrink the rows of rare bytes towards
  zero at every step whatever the data say. The output projection is a
  linear layer (it is not tied to the embedding here) and is decayed.

  Works on any tree whose paths name the leaves (a dict of arrays, an
  ``nnx.State`` of variables or of arrays).

  Args:
    params: the parameters (``nnx.state(model, nnx.Param)`` or a pure dict).

  Returns:
    A tree of bools of the same structure, for ``optax.adamw(mask=...)``.
  """

  def is_kernel(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(names) and names[-1] == "kernel"

  return jax.tree_util.tree_map_with_path(is_kernel, params)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A method of the registry with its hyperparameters (defaults filled in)."""

  name: str  # a key of gro.METHODS, or BASELINE
  hyperparameters: dict[str, float]

  @property
  def registry_name(self) -> str:
    return "sgd" if self.name == BASELINE else self.name

  @property
  def label(self) -> str:
    if self.name == BASELINE:
      return "AdamW"
    text = ", ".join(f"{k}={v:g}" for k, v in self.hyperparameters.items())
    return f"{gro.METHODS[self.name].label} ({text})" if text else (
        gro.METHODS[self.name].label)

  @property
  def transforms(self) -> bool:
    return gro.METHODS[self.registry_name].transforms


def parse_method(spec: str) -> MethodSpec:
  """``"sam"``, ``"sam:rho=0.1"`` or ``"forward:gamma=0.02,eps=0.1"``.

  Args:
    spec: a method spec of :mod:`~gradreg_optax.experiments.spec` with
      fixed hyperparameters only (``"adamw"`` or ``"sgd"``: the base
      optimizer alone).

  Returns:
    The :class:`MethodSpec`, the registry's defaults filled in.

  Raises:
    ValueError: on an unknown name or hyperparameter, or a value that is not
      a number.

  Example:
    >>> parse_method("forward:gamma=0.02").hyperparameters
    {'gamma': 0.02, 'eps': 0.1}
  """
  parsed = spec_lib.parse(spec)
  if (parsed.ranges or set(parsed.fixed) & set(spec_lib.BASE)
      or parsed.every_k != 1 or parsed.budget != 1):
    raise ValueError(f"{spec!r}: expected name=value with a hyperparameter "
                     "of the method only (no ranges, lr, wd, every_k or "
                     "budget here)")
  if parsed.method == "sgd":
    return MethodSpec(BASELINE, {})
  defaults = dict(gro.METHODS[parsed.method].defaults)
  return MethodSpec(parsed.method, {**defaults, **parsed.fixed})


def make_optimizer(model: TransformerLM, method: MethodSpec,
                   learning_rate: float | optax.Schedule, *,
                   weight_decay: float = 0.1, clip: float | None = 1.0
                   ) -> tuple[nnx.Optimizer, Callable[..., Any]]:
  """The method's transformation, then clipping, then AdamW with the mask.

  Args:
    model: the model to train.
    method: which method, with its hyperparameters.
    learning_rate: AdamW's learning rate (number or schedule).
    weight_decay: AdamW's decoupled weight decay, on :func:`decay_mask`.
    clip: global-norm clipping of the (regularized) gradient, or ``None``.

  Returns:
    ``(optimizer, train_loss)``: the ``nnx.Optimizer`` and the loss to
    differentiate, ``train_loss(model, batch)`` (:func:`lm_loss`, or its
    flooded version for flooding).
  """
  regularizer, train_loss = gro.METHODS[method.registry_name](
      lm_loss, **method.hyperparameters)
  parts = [regularizer]  # first: it must receive the plain gradient
  if clip:
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(optax.adamw(learning_rate, b1=0.9, b2=0.99,
                           weight_decay=weight_decay, mask=decay_mask))
  return nnx.Optimizer(model, optax.chain(*parts), wrt=nnx.Param), train_loss


def make_train_step(method: MethodSpec, train_loss: Callable[..., Any]
                    ) -> Callable[..., dict[str, jax.Array]]:
  """A jitted ``step(model, optimizer, batch) -> {"loss", ...}``.

  Regularized methods go through :func:`gradreg_optax.nnx_step` and also
  return the step's :class:`~gradreg_optax.Metrics`; the others (AdamW
  alone, flooding) are the plain NNX step.
  """
  if method.transforms:
    def step(model, optimizer, batch):
      loss = gro.nnx_step(model, optimizer, train_loss, batch)
      m = gro.metrics(optimizer.opt_state)
      return {"loss": loss, "sharpness": m.sharpness,
              "grad_norm": m.grad_norm}
  else:
    def step(model, optimizer, batch):
      loss, grads = nnx.value_and_grad(train_loss)(model, batch)
      optimizer.update(model, grads)
      return {"loss": loss}
  return nnx.jit(step)


@nnx.jit
def eval_loss(model: TransformerLM, batch: tuple[jax.Array, jax.Array]
              ) -> jax.Array:
  """:func:`lm_loss` with dropout off (the live model is not changed)."""
  return lm_loss(nnx.view(model, deterministic=True), batch)


# --- The corpus ---------------------------------------------------------------


CHUNK_BYTES = 4096  # the unit of the train/validation split
CORPUS_SOURCE = ("pydoc_data.topics.topics (Python standard library: the "
                 "help() texts of Python's keywords and language topics)")


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The text as bytes, which bytes are held out, and where it came from."""

  data: np.ndarray  # uint8, the whole text
  validation: np.ndarray  # bool per byte: held out for validation
  info: dict[str, Any]

  def starts(self, block_size: int, *, validation: bool) -> np.ndarray:
    """Every start of a window of ``block_size + 1`` bytes lying wholly in
    the training part (or wholly in the validation part)."""
    inside = self.validation if validation else ~self.validation
    run = np.concatenate([[0], np.cumsum(inside)])
    n = block_size + 1
    if self.data.size < n:
      return np.zeros(0, np.int64)
    whole = run[n:] - run[:-n] == n  # window [s, s + n) inside the part
    return np.flatnonzero(whole)


def load_corpus(chunk_bytes: int = CHUNK_BYTES, validation_every: int = 10
                ) -> Corpus:
  """Python's help topics as bytes, one chunk in ``validation_every`` held out.

  The topics are joined with a blank line in sorted order of their names
  and the text cut into chunks of ``chunk_bytes``; chunk ``i`` is held out
  for validation where ``i % validation_every == validation_every - 1``. The
  split is deterministic, held-out text is spread over the whole corpus, and
  no window used for training or validation crosses from one part into the
  other (:meth:`Corpus.starts`).

  Args:
    chunk_bytes: length of a chunk (> 0).
    validation_every: one chunk in this many is held out (``>= 2``).

  Returns:
    The :class:`Corpus`.
  """
  # pylint: disable-next=import-outside-toplevel
  from pydoc_data.topics import topics
  if chunk_bytes < 1 or validation_every < 2:
    raise ValueError("chunk_bytes must be >= 1 and validation_every >= 2, "
                     f"got {chunk_bytes} and {validation_every}.")
  text = "\n\n".join(topics[n] for n in sorted(topics)).encode("utf-8")
  data = np.frombuffer(text, np.uint8)
  chunk = np.arange(data.size) // chunk_bytes
  validation = chunk % validation_every == validation_every - 1
  info = {
      "source": CORPUS_SOURCE,
      "python": platform.python_version(),
      "topics": len(topics),
      "bytes": int(data.size),
      "train_bytes": int((~validation).sum()),
      "validation_bytes": int(validation.sum()),
      "split": f"chunks of {chunk_bytes} bytes, every {validation_every}th "
               "held out",
      "sha256": hashlib.sha256(text).hexdigest(),
  }
  return Corpus(data, validation, info)


def windows(data: np.ndarray, starts: np.ndarray, block_size: int
            ) -> tuple[np.ndarray, np.ndarray]:
  """Inputs ``data[s:s+T]`` and targets ``data[s+1:s+T+1]`` per start ``s``."""
  idx = starts[:, None] + np.arange(block_size + 1)[None, :]
  chunk = data[idx].astype(np.int32)
  return chunk[:, :-1], chunk[:, 1:]


def train_batches(corpus: Corpus, batch_size: int, block_size: int,
                  seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless batches of training windows at uniformly random positions."""
  starts = corpus.starts(block_size, validation=False)
  if not starts.size:
    raise ValueError(f"no training window of {block_size + 1} bytes.")
  rng = np.random.default_rng(seed)
  while True:
    yield windows(corpus.data, rng.choice(starts, batch_size), block_size)


def validation_batches(corpus: Corpus, batch_size: int, block_size: int,
                       num_batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Fixed batches of validation windows spread evenly over the held-out
  text (as many as there are distinct windows, at most
  ``batch_size * num_batches``)."""
  starts = corpus.starts(block_size, validation=True)
  if not starts.size:
    raise ValueError(f"no validation window of {block_size + 1} bytes.")
  n = min(batch_size * num_batches, starts.size)
  starts = starts[np.linspace(0, starts.size - 1, n).astype(np.int64)]
  return [windows(corpus.data, starts[i:i + batch_size], block_size)
          for i in range(0, n, batch_size)]


# --- Training -----------------------------------------------------------------


@dataclasses.dataclass
class RunConfig:
  """Everything a run depends on besides the methods."""

  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  steps: int = 400
  batch_size: int = 16
  learning_rate: float = 1e-3
  warmup: int = 40
  weight_decay: float = 0.1
  clip: float = 1.0
  eval_every: int = 40
  eval_batches: int = 16
  seed: int = 0
  quiet: bool = False


def _progress(total: int, desc: str, disable: bool):
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=desc, disable=disable, leave=True,
              file=sys.stderr)


def train_method(method: MethodSpec, corpus: Corpus, config: RunConfig
                 ) -> dict[str, Any]:
  """Trains one model with ``method``; returns its curve and timings.

  Every method starts from the same initial parameters and dropout seeds and
  sees the same sequence of batches.
  """
  mc = config.model
  model = TransformerLM(mc, rngs=nnx.Rngs(params=config.seed,
                                          dropout=config.seed + 1))
  # Warm-up is cut short where the run is shorter than it.
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, min(config.warmup, config.steps - 1),
      config.steps, end_value=config.learning_rate / 10)
  optimizer, train_loss = make_optimizer(
      model, method, schedule, weight_decay=config.weight_decay,
      clip=config.clip or None)
  step = make_train_step(method, train_loss)
  batches = train_batches(corpus, config.batch_size, mc.block_size,
                          config.seed)
  val = validation_batches(corpus, config.batch_size,
                           mc.block_size, config.eval_batches)

  def validate() -> float:
    return float(np.mean([float(eval_loss(model, b)) for b in val]))

  curve = {"step": [0], "val_loss": [validate()], "train_loss": [None],
           "sharpness": [None], "grad_norm": [None]}
  window: dict[str, list[float]] = {}
  step_s = []
  bar = _progress(config.steps, method.label, config.quiet)
  t_start = time.perf_counter()
  for i in range(1, config.steps + 1):
    t0 = time.perf_counter()
    out = jax.device_get(step(model, optimizer, next(batches)))
    step_s.append(time.perf_counter() - t0)
    for k, v in out.items():
      window.setdefault(k, []).append(float(v))
    bar.update(1)
    if i % config.eval_every == 0 or i == config.steps:
      curve["step"].append(i)
      curve["val_loss"].append(validate())
      for k in ("train_loss", "sharpness", "grad_norm"):
        values = window.get("loss" if k == "train_loss" else k)
        curve[k].append(float(np.mean(values)) if values else None)
      window = {}
      bar.set_postfix(train=f"{curve['train_loss'][-1]:.3f}",
                      val=f"{curve['val_loss'][-1]:.3f}")
    if not np.isfinite(out["loss"]):
      bar.write(f"{method.label}: non-finite loss at step {i}; stopped.")
      break
  bar.close()
  return {
      "method": method.name,
      "label": method.label,
      "hyperparameters": method.hyperparameters,
      "curve": curve,
      "final_val_loss": curve["val_loss"][-1],
      "final_train_loss": curve["train_loss"][-1],
      # The first step includes compilation.
      "compile_and_first_step_s": step_s[0],
      "median_step_ms": float(np.median(step_s[1:]) * 1e3) if len(step_s) > 1
                        else None,
      "wall_s": time.perf_counter() - t_start,
  }


def run(methods: Sequence[MethodSpec], config: RunConfig) -> dict[str, Any]:
  """Trains every method in turn on the corpus; returns the results."""
  corpus = load_corpus()
  model = TransformerLM(config.model, rngs=nnx.Rngs(0))
  num_params = sum(x.size for x in jax.tree.leaves(
      nnx.state(model, nnx.Param)))
  results = []
  for m in methods:
    results.append(train_method(m, corpus, config))
  return {
      "config": dataclasses.asdict(config),
      "num_params": int(num_params),
      "corpus": corpus.info,
      "device": jax.devices()[0].device_kind,
      "cpu_count": os.cpu_count(),
      "versions": _report.versions(),
      "methods": results,
  }


def table(result: dict[str, Any]) -> str:
  """The final losses and step times as a Markdown table."""
  rows = ["| method | final train loss | final val loss | best val loss | "
          "step ms (median) |", "|---|---|---|---|---|"]
  for r in result["methods"]:
    val = [v for v in r["curve"]["val_loss"] if v is not None]
    ms, train = r["median_step_ms"], r["final_train_loss"]
    rows.append(f"| {r['label']} | "
                + (f"{train:.4f}" if train is not None else "-")
                + f" | {r['final_val_loss']:.4f} | {min(val):.4f} | "
                + (f"{ms:.1f}" if ms else "-") + " |")
  return "\n".join(rows)


def plot(result: dict[str, Any], path: str) -> None:
  """Loss curves (validation solid, training dashed) and sharpness."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for k, r in enumerate(result["methods"]):
    c = r["curve"]
    color = f"C{k}"
    axes[0].plot(c["step"], c["val_loss"], "-", color=color,
                 label=f"{r['label']} val")
    train = [(s, v) for s, v in zip(c["step"], c["train_loss"])
             if v is not None]
    if train:
      axes[0].plot(*zip(*train), "--", color=color, alpha=0.6,
                   label=f"{r['label']} train")
    sharp = [(s, v) for s, v in zip(c["step"], c["sharpness"])
             if v is not None]
    if sharp:
      axes[1].plot(*zip(*sharp), "-", color=color, label=r["label"])
  cfg = result["config"]
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("cross-entropy (nats per byte)")
  axes[0].set_title(f"byte-level LM, {result['num_params']:,} parameters, "
                    f"batch {cfg['batch_size']}x{cfg['model']['block_size']}")
  axes[0].legend(fontsize=7)
  axes[1].set_xlabel("step")
  axes[1].set_ylabel("L(theta + r d) - L(theta), training batch")
  axes[1].set_title("sharpness, each method at its own radius")
  if axes[1].lines:
    axes[1].legend(fontsize=7)
  fig.tight_layout()
  _report.save_figure(fig, path)


# --- Command line -------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Parses the command line, trains every method, writes the results."""
  count, whole = _cli.POSITIVE_INT, _cli.number(int, 0)
  positive, nonnegative = _cli.POSITIVE, _cli.NONNEGATIVE
  parser = _cli.parser(MODULE, __doc__.split("\n")[0])
  parser.add_argument(
      "--methods", nargs="+", default=list(DEFAULT_METHODS),
      help="methods to compare: adamw (AdamW alone) or any name of "
      "gradreg_optax.METHODS, optionally with hyperparameters, e.g. "
      "sam:rho=0.1 forward:gamma=0.02,eps=0.1 (default: %(default)s)")
  parser.add_argument("--steps", type=count, default=400)
  parser.add_argument("--batch-size", type=count, default=16)
  parser.add_argument("--block-size", type=count, default=64,
                      help="context length in bytes")
  parser.add_argument("--dim", type=count, default=128)
  parser.add_argument("--heads", type=count, default=4)
  parser.add_argument("--layers", type=count, default=3)
  parser.add_argument("--dropout", type=nonnegative, default=0.1)
  parser.add_argument("--learning-rate", type=positive, default=1e-3,
                      help="AdamW's peak learning rate (linear warm-up, "
                      "then cosine decay to a tenth)")
  parser.add_argument("--warmup", type=whole, default=40,
                      help="warm-up steps")
  parser.add_argument("--weight-decay", type=nonnegative, default=0.1)
  parser.add_argument("--clip", type=nonnegative, default=1.0,
                      help="global-norm clipping after the method "
                      "(0: none)")
  parser.add_argument("--eval-every", type=count, default=40)
  parser.add_argument("--eval-batches", type=count, default=16)
  parser.add_argument("--seed", type=whole, default=0)
  parser.add_argument("--out", default=None,
                      help="write OUT.json (curves, command) and OUT.md")
  parser.add_argument("--figure", default=None, help="write this PNG")
  parser.add_argument("--quiet", action="store_true",
                      help="no progress bars")
  args = parser.parse_args(argv)
  if args.dim % args.heads:
    parser.error(f"--dim ({args.dim}) must be a multiple of --heads "
                 f"({args.heads})")
  if args.block_size >= CHUNK_BYTES:
    parser.error(f"--block-size must be below {CHUNK_BYTES}, the length of "
                 "the corpus's validation chunks")
  if args.dropout >= 1:
    parser.error(f"--dropout must be below 1, got {args.dropout}")
  try:
    methods = [parse_method(s) for s in args.methods]
  except ValueError as e:
    parser.error(f"--methods: {e}")
  if len({m.label for m in methods}) != len(methods):
    parser.error("--methods: the same method and hyperparameters twice")
  config = RunConfig(
      model=ModelConfig(block_size=args.block_size, dim=args.dim,
                        num_heads=args.heads, num_layers=args.layers,
                        dropout=args.dropout),
      steps=args.steps, batch_size=args.batch_size,
      learning_rate=args.learning_rate, warmup=args.warmup,
      weight_decay=args.weight_decay, clip=args.clip,
      eval_every=args.eval_every, eval_batches=args.eval_batches,
      seed=args.seed, quiet=args.quiet)
  # Build every method once before training, so that a hyperparameter the
  # library rejects (a negative rho, say) stops the run at once.
  for m in methods:
    try:
      gro.METHODS[m.registry_name](lm_loss, **m.hyperparameters)
    except (TypeError, ValueError) as e:
      parser.error(f"--methods {m.name}: {e}")

  t0 = time.perf_counter()
  result = run(methods, config)
  result["wall_s"] = time.perf_counter() - t0
  result["command"] = _report.command_line(MODULE, argv)
  corpus = result["corpus"]
  text = (f"Byte-level transformer LM ({result['num_params']:,} parameters: "
          f"{config.model.num_layers} layers, dim {config.model.dim}, "
          f"{config.model.num_heads} heads, context {config.model.block_size},"
          f" dropout {config.model.dropout}) on {corpus['source']}, Python "
          f"{corpus['python']}: {corpus['train_bytes']:,} training bytes, "
          f"{corpus['validation_bytes']:,} validation bytes "
          f"({corpus['split']}). {config.steps} steps of batch "
          f"{config.batch_size}, AdamW "
          f"(peak lr {config.learning_rate:g}, b2 0.99, weight decay "
          f"{config.weight_decay:g} on linear kernels only, clip "
          f"{config.clip:g}), warm-up {min(config.warmup, config.steps - 1)} "
          f"steps then cosine. Validation loss on "
          f"{config.eval_batches * config.batch_size} fixed windows, dropout "
          f"off; training loss: mean over the steps since the previous "
          f"evaluation, dropout on. Step times come from the training loops, "
          f"one method after the other (for costs relative to AdamW see "
          f"benchmarks/transformer_cost.py, which interleaves them). Device: "
          f"{result['device']} ({os.cpu_count()} cores);"
          f" total {result['wall_s']:.0f} s.\n\n" + table(result))
  _report.publish(result, text, args.out, args.figure, plot)
  return result


if __name__ == "__main__":
  main()
