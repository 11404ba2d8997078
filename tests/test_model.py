import pytest
import torch

from litelm_edge.pipeline.model import ModelConfig, Transformer, preset


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


def unshared_copy(shared: Transformer, blocks: list) -> Transformer:
    """An unshared model of the same shape whose layer i holds the weights of blocks[i]."""
    import dataclasses
    plain = Transformer(dataclasses.replace(shared.cfg, share_every=1)).eval()
    sd = {k: v for k, v in shared.state_dict().items() if not k.startswith("layers.")}
    for i, block in enumerate(blocks):
        sd.update({f"layers.{i}.{k}": v for k, v in block.state_dict().items()})
    plain.load_state_dict(sd)
    return plain


def test_weight_sharing_is_an_unshared_model_with_tied_layers():
    """share_every=2 over 4 layers runs blocks A A B B: the logits of an unshared model whose
    layers hold A, A, B, B, and not those of A, B, A, B; half the block parameters."""
    torch.manual_seed(0)
    shared = Transformer(small(n_layer=4, share_every=2)).eval()
    assert len(shared.layers) == 2 and shared.layer_order() == [0, 0, 1, 1]
    A, B = shared.layers
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        want = unshared_copy(shared, [A, A, B, B])(idx)[0]
        other = unshared_copy(shared, [A, B, A, B])(idx)[0]
        got = shared(idx)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert (got - other).abs().max() > 1e-3  # the order matters: this check can tell
    per_block = sum(p.numel() for p in A.parameters())
    assert unshared_copy(shared, [A, A, B, B]).num_params() - shared.num_params() == 2 * per_block


def test_bad_shape_is_a_user_error():
    from litelm_edge.config import UserError
    with pytest.raises(UserError, match="n_kv_head"):
        small(n_head=4, n_kv_head=3).validate()
