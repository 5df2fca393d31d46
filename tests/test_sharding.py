"""Sharded loading and forward passes on 8 fake CPU devices equal the single-device result."""

import jax
import numpy as np
import pytest
from flax import nnx
from hf_tiny import CONFIGS, SEQ, make_hf_model

from tpt_jax.api import ModelHandle
from tpt_jax.hf_io import load_hf_dir
from tpt_jax.sharding import TRAIN_RULES, batch_sharding, logical_to_spec, make_mesh

MESHES = [(1, 8, 1), (2, 2, 2), (1, 2, 4), (2, 1, 4)]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    make_hf_model(request.param).save_pretrained(path)
    return path


def tokens():
    return np.random.RandomState(3).randint(0, 160, (8, SEQ))


@pytest.fixture(scope="module")
def single(hf_dir):
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    return ModelHandle(load_hf_dir(hf_dir, mesh=mesh), None, mesh).logits(tokens())


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("rules", ["sample", "train"])
def test_sharded_forward_equals_single_device(hf_dir, single, shape, rules):
    mesh = make_mesh(shape)
    rule_table = TRAIN_RULES if rules == "train" else None
    model = load_hf_dir(hf_dir, mesh=mesh, **({"rules": rule_table} if rule_table else {}))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert any(len(p.sharding.device_set) == 8 for p in params)
    if rules == "train" or shape[2] > 1:  # sampling keeps weights whole along fsdp
        assert any(not p.sharding.is_fully_replicated for p in params), "nothing was sharded"
    out = ModelHandle(model, None, mesh).logits(tokens())
    np.testing.assert_allclose(out, single, rtol=0, atol=1e-5 * np.abs(single).max())


def test_rules_drop_axes_that_do_not_divide():
    mesh = make_mesh((2, 2, 2))
    # 3 heads don't divide the tensor axis: replicated there instead of failing
    assert logical_to_spec(("embed", "q_heads", "head_dim"), (64, 3, 16), mesh) == (
        jax.sharding.PartitionSpec("fsdp", None, None)
    )
    assert logical_to_spec(("batch", None), (4, 9), mesh) == jax.sharding.PartitionSpec(
        ("data", "fsdp"), None
    )


def test_mesh_of_wrong_size_is_a_clear_error():
    from tpt_jax.errors import TptError

    with pytest.raises(TptError, match="needs 6 devices but 8"):
        make_mesh((1, 3, 2))
    # One process holds all 8 devices here: a DCN axis over 2 granules has nothing to cross.
    with pytest.raises(TptError, match=r"spans 2 granules but the devices are on 1 processes"):
        make_mesh((2, 2, 2), dcn=(2, 1, 1))


def test_a_batch_that_does_not_split_is_an_error_never_replicated():
    from tpt_jax.errors import TptError

    mesh = make_mesh((2, 2, 2))
    assert batch_sharding(mesh, 8).spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(TptError, match=r"batch of 6 rows .* data x fsdp = 2 x 2 = 4 devices"):
        batch_sharding(mesh, 6)


def test_logits_pad_rows_to_the_mesh(hf_dir, single):
    """5 rows on 8 row devices: padded to 8 for the forward, the 5 asked for come back."""
    mesh = make_mesh((1, 8, 1))
    out = ModelHandle(load_hf_dir(hf_dir, mesh=mesh), None, mesh).logits(tokens()[:5])
    assert out.shape[0] == 5
    np.testing.assert_allclose(out, single[:5], rtol=0, atol=1e-5 * np.abs(single).max())
