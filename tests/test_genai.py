"""The x86 artifact is an onnxruntime-genai model folder: genai's own generator, given the folder as
built, produces the greedy tokens `litelm-edge generate --artifact` does."""
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
og = pytest.importorskip("onnxruntime_genai",
                         reason="the fused x86 graph is emitted by onnxruntime-genai's builder")

from x86_artifact import x86_artifact  # noqa: E402

from litelm_edge.config import UserError  # noqa: E402
from litelm_edge.devices import runner as dr  # noqa: E402
from litelm_edge.manifest import verified  # noqa: E402
from litelm_edge.pipeline.generate import generate, generate_artifact  # noqa: E402
from litelm_edge.pipeline.tokenizer import Tokenizer  # noqa: E402

PROMPT = "First Citizen:\nBefore we proceed"
N = 24


@pytest.fixture(scope="module")
def art(tiny_run, data_dir, tmp_path_factory):
    return x86_artifact(tiny_run, data_dir, tmp_path_factory)  # fp32, the fused graph


def genai_greedy(folder, ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """onnxruntime-genai's generator on the folder: the sequence and its first step's logits (V,)."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(ids, np.int32))
    first = np.asarray(gen.get_logits()).reshape(-1)
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)], first


def test_genai_generates_what_generate_artifact_does(art):
    m = verified(art)
    assert {"genai_config.json", "tokenizer_config.json"} <= set(m["files"])  # verified like the graph
    cfg = json.loads((art / "genai_config.json").read_text())["model"]
    assert cfg["decoder"]["filename"] == m["graphs"]["decoder"]
    assert cfg["vocab_size"] == m["model"]["vocab_size"]
    tok = Tokenizer.load(art / "tokenizer.json")
    ids = tok.encode(PROMPT)
    ours = generate_artifact(art, ids, N, 0.0, None, 0, eot=-1)  # never stops early, as genai here
    theirs, first = genai_greedy(art, ids, N)
    assert theirs == ours
    assert og.Tokenizer(og.Model(str(art))).encode(PROMPT).tolist() == ids  # genai tokenizes as we do
    # and the numbers behind the tokens: genai's first step is our runtime's serving prefill
    rt = dr.open_runtime(art, m, 1)
    assert np.abs(first - dr.prefill_last(rt, np.array(ids, np.int64))).max() < 1e-4
    text = generate(art, PROMPT, N, from_artifact=True)
    assert text == tok.decode(theirs) or text == tok.decode(theirs[:theirs.index(tok.eot_id) + 1])


def test_a_changed_genai_config_fails_verification(art, tmp_path):
    import shutil
    copy = tmp_path / "a"
    shutil.copytree(art, copy)
    (copy / "genai_config.json").write_text((copy / "genai_config.json").read_text().replace("128", "64"))
    with pytest.raises(UserError, match="genai_config.json"):
        verified(copy)
