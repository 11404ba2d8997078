import pytest
import torch

from litelm_edge.model import ModelConfig, Transformer, preset


def small(**kw):
    return ModelConfig(**dict(dict(vocab_size=97, n_layer=3, n_embd=32, n_head=4, n_kv_head=2,
                                   intermediate_size=64, max_seq_len=64), **kw))


def test_presets_parameter_counts():
    # model card figures: tiny 1.31M, minimind-26m 25.8M (tied embeddings counted once)
    assert Transformer(preset("tiny")).num_params() == 1_311_872
    big = preset("minimind-26m")
    assert (big.n_embd, big.n_layer, big.n_head, big.n_kv_head, big.intermediate_size, big.vocab_size) == (512, 8, 8, 2, 1408, 6400)
    assert Transformer(big).num_params() == 25_829_888


def test_shapes_and_loss():
    m = Transformer(small())
    idx = torch.randint(0, 97, (2, 10))
    logits, loss = m(idx, torch.randint(0, 97, (2, 10)))
    assert logits.shape == (2, 10, 97)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(97.0)).item(), rel=0.1)  # untrained ~ uniform


@pytest.mark.parametrize("kw", [{}, {"gated_attn": True}, {"share_every": 2}, {"tie_embeddings": False}])
def test_kv_cache_decode_equals_full_forward(kw):
    torch.manual_seed(0)
    m = Transformer(small(**kw)).eval()
    idx = torch.randint(0, 97, (1, 20))
    full, _ = m(idx)
    k, v = m.empty_cache()
    pre, k, v = m.forward_cached(idx[:, :7], k, v)
    steps = [pre]
    for t in range(7, 20):
        lo, k, v = m.forward_cached(idx[:, t:t + 1], k, v)
        steps.append(lo)
    assert k.shape == (3, 1, 2, 20, 8)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_weight_sharing_reduces_parameters():
    base, shared = Transformer(small(n_layer=4)), Transformer(small(n_layer=4, share_every=2))
    assert len(shared.layers) == 2 and shared.layer_order() == [0, 0, 1, 1]
    per_block = sum(p.numel() for p in base.layers[0].parameters())
    assert base.num_params() - shared.num_params() == 2 * per_block


def test_bad_shape_is_a_user_error():
    from litelm_edge.config import UserError
    with pytest.raises(UserError, match="n_kv_head"):
        small(n_head=4, n_kv_head=3).validate()
