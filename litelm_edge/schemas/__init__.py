"""JSON Schemas (draft 2020-12) of what litelm-edge writes for machines, versioned by file name:
bench-3 (bench.json), fleet-3 (fleet.json), summary-2 (the CI summary.json); the versions before
(bench-2, fleet-2, summary-1: no `run` record) stay, so older documents still validate. A document
names its schema in its "schema" key ("litelm-edge-bench/3" -> bench-3.schema.json)."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def path_for(doc_schema: str) -> Path:
    """'litelm-edge-bench/3' -> .../bench-3.schema.json"""
    kind, version = doc_schema.removeprefix("litelm-edge-").split("/")
    return HERE / f"{kind}-{version}.schema.json"


def validate(doc: dict) -> None:
    """Raise jsonschema.ValidationError when doc does not match the schema it names."""
    import jsonschema
    from referencing import Registry, Resource
    schemas = [json.loads(p.read_text()) for p in sorted(HERE.glob("*.schema.json"))]
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    schema = json.loads(path_for(doc["schema"]).read_text())
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)
