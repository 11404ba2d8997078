"""JSON Schemas (draft 2020-12) of what litelm-edge writes for machines, versioned by file name:
bench-2 (bench.json), fleet-2 (fleet.json), summary-1 (the CI summary.json). A document names its
schema in its "schema" key ("litelm-edge-bench/2" -> bench-2.schema.json)."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def path_for(doc_schema: str) -> Path:
    """'litelm-edge-bench/2' -> .../bench-2.schema.json"""
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
