"""Connectors: shapes for several K, gradients reach every parameter, pooling against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mir_jax.models import ConnectorConfig
from mir_jax.models.connectors import Connector, adaptive_pool_matrix

P, DV, DL = 36, 24, 40  # 6x6 patch grid


def _x(b=2):
    return jax.random.normal(jax.random.key(1), (b, P, DV))


@pytest.mark.parametrize("cfg,k", [
    (dict(name="linear"), P),
    (dict(name="mlp2x_gelu"), P),
    (dict(name="mlp3x_gelu", bias=False), P),
    (dict(name="avgpool", num_tokens=9), 9),
    (dict(name="avgpool", num_tokens=16), 16),  # 6 -> 4: overlapping adaptive bins
    (dict(name="attnpool", num_tokens=5, num_heads=4), 5),
    (dict(name="attnpool", num_tokens=49, num_heads=4), 49),
    (dict(name="c_abstractor", num_tokens=4, depth=1, hidden_size=16), 4),
    (dict(name="c_abstractor", num_tokens=9, depth=2), 9),
])
def test_shape_and_gradient_reaches_every_parameter(cfg, k):
    conn = Connector(DV, DL, ConnectorConfig(**cfg), dtype=jnp.float32, rngs=nnx.Rngs(0))
    # The c_abstractor's last conv of each block starts at zero (identity block), which would
    # zero the gradient of the convs before it; perturb every parameter first.
    params = nnx.state(conn, nnx.Param)
    nnx.update(conn, jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), params))
    x = _x()
    w = jax.random.normal(jax.random.key(3), (2, k, DL))

    @nnx.jit
    def out_and_grads(m):
        def loss(m):
            y = m(x)
            return jnp.sum(y * w), y

        return nnx.grad(loss, has_aux=True)(m)

    grads, y = out_and_grads(conn)
    assert y.shape == (2, k, DL)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, f"no gradient for {jax.tree_util.keystr(path)}"


def test_adaptive_pool_matrix_matches_torch():
    torch = pytest.importorskip("torch", reason="torch's adaptive pooling is the reference here; pip install torch")
    x = np.random.default_rng(0).standard_normal((1, 3, 7)).astype(np.float32)
    for out in (1, 2, 3, 4, 5, 7):
        want = torch.nn.functional.adaptive_avg_pool1d(torch.tensor(x), out).numpy()[0]
        got = x[0] @ adaptive_pool_matrix(7, out).T
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_avgpool_is_block_mean_then_projection():
    conn = Connector(DV, DL, ConnectorConfig(name="avgpool", num_tokens=9, bias=True), dtype=jnp.float32,
                     rngs=nnx.Rngs(0))
    x = np.asarray(_x(1))
    grid = x.reshape(1, 3, 2, 3, 2, DV).mean(axis=(2, 4)).reshape(1, 9, DV)  # 2x2 blocks of the 6x6 grid
    kern, bias = np.asarray(conn.impl.proj.kernel[...]), np.asarray(conn.impl.proj.bias[...])
    np.testing.assert_allclose(np.asarray(conn(jnp.asarray(x))), grid @ kern + bias, atol=1e-5)


def test_mlp_connector_closed_form():
    conn = Connector(DV, DL, ConnectorConfig(name="mlp2x_gelu"), dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = np.asarray(_x(1), np.float64)
    l1, l2 = conn.impl.layers
    h = x @ np.asarray(l1.kernel[...]) + np.asarray(l1.bias[...])
    from scipy.special import erf

    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    want = h @ np.asarray(l2.kernel[...]) + np.asarray(l2.bias[...])
    np.testing.assert_allclose(np.asarray(conn(jnp.asarray(x, jnp.float32))), want, atol=1e-5)


def test_bad_connector_configs_raise():
    with pytest.raises(ValueError, match="unknown connector"):
        ConnectorConfig(name="mlp_gelu")
    from mir_jax.models import LlavaConfig

    with pytest.raises(ValueError, match="square num_tokens"):
        LlavaConfig.tiny(connector={"name": "avgpool", "num_tokens": 8})


@pytest.mark.parametrize("name", ["linear", "mlp2x_gelu", "avgpool", "attnpool", "c_abstractor"])
def test_connector_builds_sharded_under_a_mesh(name):
    """Created inside an active 2x2x2 mesh, every parameter is laid out by the logical-axis table
    and no mesh axis shards two dimensions of one array (vision_embed and embed both map to fsdp)."""
    from mir_jax.sharding import make_mesh, use_mesh

    mesh = make_mesh((2, 2, 2))
    with use_mesh(mesh):
        conn = Connector(32, 64, ConnectorConfig(name=name, num_tokens=4), dtype=jnp.float32,
                         rngs=nnx.Rngs(0))
    specs = [leaf.sharding.spec for leaf in jax.tree.leaves(nnx.state(conn, nnx.Param))]
    assert any("fsdp" in str(s) for s in specs)
    for spec in specs:
        axes = [a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
        assert len(axes) == len(set(axes)), spec
