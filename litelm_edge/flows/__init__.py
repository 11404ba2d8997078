"""The flows: orchestrators over every part below them (pipeline, backends, devices, reports).

build (checkpoint -> artifact through a backend, with the parity gate), run (a recipe end to end)
with recipe (its schema) and gates (its verdicts), ci (per-device CI bundles and their summary),
tune (a backend's schedule picked by benching candidates on a device). Only cli.py sits above.
"""
