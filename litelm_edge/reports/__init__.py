"""The reports: judge a bench against its target's thresholds and write what people read.

judge (verdict per threshold), report (bench.json/.md/.html), plots (inline SVG), junit (JUnit XML),
compare (many benches side by side), ci (the per-device CI bundles and their summary).
"""
