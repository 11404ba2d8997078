"""The pipeline: data -> tokenizer -> train -> compress, and what reads a checkpoint back.

data*.py (corpus reading, cleaning on datatrove, tokens), tokenizer, model, train, checkpoint and
hf_config (the run folder, HF layout), importer (a published GGUF or HF folder -> checkpoint),
compress with its methods (quant, prune, distill, share), eval and generate. Building through a
backend and running a recipe are flows (litelm_edge/flows/).
"""
