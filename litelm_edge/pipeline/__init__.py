"""The pipeline: data -> tokenizer -> train -> compress -> export, and the recipe runner (run.py).

data*.py (corpus reading, cleaning on datatrove, tokens), tokenizer, model, train, checkpoint and
hf_config (the run folder, HF layout), importer (a published GGUF or HF folder -> checkpoint), compress with its methods (quant, prune, distill, share),
export (build through a backend, with the parity gate), eval, generate, recipe and gates.
"""
