"""The reports: judge a bench against its target's thresholds and write what people read.

judge (verdict per threshold), report (bench.json/.md/.html), plots (inline SVG), junit (JUnit XML),
compare (many benches side by side), fmt (how every report writes a number). The CI bundles and
their summary are a flow (flows/ci.py).
"""
