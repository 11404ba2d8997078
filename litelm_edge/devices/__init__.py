"""The devices: run an artifact where it runs and bring the figures back.

Device side (numpy and the runtime only, no litelm_edge import): runner.py (protocol, parity,
timing) and facts.py (CPU, memory, thermal, energy), uploaded with backends/<name>/runtime.py at
the same paths relative to the package root. Host side: bench (local bench, judgement), remote
(SSH), push (content-addressed uploads), remote_bench, fleet (many devices, one report).
"""
