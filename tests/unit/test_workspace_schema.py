"""The workspace fields' schema (schemas/workspace.schema.json) is the one /openapi.json shows."""
from __future__ import annotations

import json
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas"


def test_the_openapi_document_shows_the_schema_put_workspaces_validates_with():
    validated = json.loads((SCHEMAS / "workspace.schema.json").read_text())
    shown = json.loads((SCHEMAS / "openapi.json").read_text())["components"]["schemas"]["WorkspaceFields"]
    assert shown == {k: v for k, v in validated.items() if k not in ("$schema", "$id")}
