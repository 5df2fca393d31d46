"""XLA's own byte counts for train.py's compiled steps, for checking `tpt plan`'s estimates
(tests/test_plan.py in one process, tests/mp_plan.py across processes)."""

import jax
import jax.numpy as jnp
from flax import nnx

from tpt_jax import train
from tpt_jax.config import TrainConfig
from tpt_jax.data import Rows
from tpt_jax.models.config import preset
from tpt_jax.models.transformer import abstract_model

# A small body on SmolLM2-135M's real widths and vocabulary: compiles in seconds.
SMALL = preset("smollm2-135m").replace(num_layers=4)


def sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def peak(analysis) -> int:
    """What a compiled call adds beyond its arguments: its temporaries and the outputs that do
    not reuse a donated argument's buffer."""
    return (
        analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
    )


def train_step_bytes(cfg: TrainConfig, mesh) -> int:
    """TRAIN per device as XLA lays it out: the larger of a micro-step (its arguments,
    temporaries and non-aliased outputs, plus the Adam moments alive beside it) and the
    apply-step, for SMALL at `cfg`'s batch on `mesh`."""
    graphdef, params = nnx.split(abstract_model(SMALL, jnp.float32), nnx.Param)
    fns = train._Compiled(graphdef, params, mesh, cfg, 10)
    acc = jax.eval_shape(train._zero_acc, params)
    opt = jax.eval_shape(train.make_optimizer(cfg, 10).init, params)
    rows = Rows.empty(cfg.micro_batch, cfg.max_len).arrays()
    batch = {k: sds(a.shape, a.dtype) for k, a in rows.items()}
    micro = fns.micro.lower(params, acc, batch).compile().memory_analysis()
    apply = fns.apply.lower(params, opt, acc).compile().memory_analysis()
    moments = 2 * micro.output_size_in_bytes  # Adam's mu and nu: one accumulator's size each
    return max(
        micro.argument_size_in_bytes + peak(micro) + moments,
        apply.argument_size_in_bytes + peak(apply),
    )
