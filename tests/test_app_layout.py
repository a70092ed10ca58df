"""How app/ is put together: no import circle (an AST walk over app/, imports inside functions and under
TYPE_CHECKING included), and one head registry (app/heads.py ``SPECS``) that the response stage, the query flags,
the table and the CLI derive from."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.test_training_layout import REPO, cycles, import_graph


def test_no_import_circle_in_app():
    graph = import_graph("app")
    assert len(graph) > 60
    assert cycles(graph) == []


def test_no_import_circle_in_the_cli_and_app_together():
    assert cycles(import_graph("app", "microfacs_cli")) == []


def test_the_registry_drives_the_endpoints_flags_and_fields():
    from app.heads import OPT_IN, SPECS, TYPED
    from app.main import create_app
    from app.respond import ENDPOINTS
    from app.settings import Settings

    spec = create_app(Settings(api_key=None)).openapi()
    analysis = {path for path, ops in spec["paths"].items() if "analysis" in ops.get("post", {}).get("tags", [])}
    assert analysis == set(ENDPOINTS)
    assert {"au", "expression"} == TYPED and set(OPT_IN) == {"blendshapes", "gaze"}
    face = spec["components"]["schemas"]["FaceWithAll"]["properties"]
    assert {s.field for s in SPECS.values()} <= set(face)
    for path, endpoint in ENDPOINTS.items():
        params = {p["name"] for p in spec["paths"][path]["post"]["parameters"]}
        assert set(OPT_IN) <= params, path  # each opt-in head's query flag, declared from the registry
        assert endpoint.heads <= TYPED
        assert spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] \
            .endswith(endpoint.model.__name__)


def test_the_sdk_endpoints_match_the_servers_openapi():
    from microfacs_client.client import ENDPOINTS as SDK

    from app.main import create_app
    from app.respond import ENDPOINTS
    from app.settings import Settings

    paths = create_app(Settings(api_key=None)).openapi()["paths"]
    assert {e.name: e.path for e in ENDPOINTS.values()} == SDK
    for path in SDK.values():
        assert "post" in paths[path]


def test_the_cli_flags_come_from_the_registry():
    from app.heads import OPT_IN
    from microfacs_cli.main import ENDPOINT_NAMES, HEADS_OF

    assert {"auto", "analyze", "detect-faces", "detect-au", "recognize-expression"} == ENDPOINT_NAMES
    assert HEADS_OF["analyze"] == {"au", "expression"} and HEADS_OF["detect_faces"] == set()
    import microfacs_cli.main as cli

    parser_text = Path(cli.__file__).read_text()
    for name in OPT_IN:  # declared from the registry only
        assert f'add_argument("--{name}"' not in parser_text
    assert OPT_IN


def test_importing_app_main_builds_no_app():
    code = "import app.main as m, sys; sys.exit(m._app is not None)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("CMD") and "uvicorn" in line:
            assert "app.main:create_app --factory" in line


def test_render_draws_the_typed_result_not_reparsed_json():
    assert "json" not in {a.name for node in ast.walk(ast.parse((REPO / "app/render_http.py").read_text()))
                          if isinstance(node, ast.Import) for a in node.names}


def test_every_head_has_its_table_columns():
    """The CLI's CSV and to_dataframe() (app/table.py) have a block of columns for each registered head's field:
    adding a head without its columns fails here."""
    from app.heads import SPECS
    from app.table import BLOCKS

    assert set(BLOCKS) == {spec.field for spec in SPECS.values()}
