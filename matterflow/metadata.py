"""`matterflow metadata [--check]`: the `.script.yaml` and `.script.lock` of every script under f/, offline.

`wmill generate-metadata` needs a running Windmill server; this produces the same files without one:
- the schema is what Windmill's own Python parser (npm windmill-parser-wasm-py) infers from `main()`, converted
  by windmill-cli's own code, with each parameter's description taken from the `Args:` section of main()'s
  docstring, so the UI form explains itself;
- the lock pins, at the versions this project is tested with (the installed distributions), everything the script
  imports, directly or through the workspace modules it imports relatively (as Windmill does for an importer's
  lock), with their dependencies. Windmill maps `azure.storage.blob.aio` to the wrong PyPI package; a lock
  written from the real distributions avoids that.
`--check` fails when a file is stale, so a change to `main()` or to a dependency cannot be pushed without them.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from matterflow.windmill_parser import parse_scripts

ROOT = Path(__file__).resolve().parent.parent
_ARG_LINE = re.compile(r"^\s{4,}(\w+):\s*(.*)$")
# Scripts that run on a dedicated worker group (infra/compose and infra/helm give the `llm` group this tag), so the
# fan-out scales by adding replicas of that group alone.
WORKER_TAGS = {"f/matter/llm_fanout": "llm"}
RESULT_SCHEMA_FILE = Path("docs") / "result.schema.json"


def generate(root: Path = ROOT) -> dict[Path, str]:
    """{path: content} of every metadata file the workspace should have."""
    scripts = sorted((root / "f").rglob("*.py"))
    parsed = parse_scripts(scripts, root)
    files: dict[Path, str] = {}
    for path in scripts:
        script_path = str(path.relative_to(root).with_suffix(""))
        entry = parsed[script_path]
        source = path.read_text()
        tree = ast.parse(source)
        summary, description = _module_doc(tree)
        schema = entry["schema"]
        for name, text in _arg_descriptions(tree).items():
            if name in schema["properties"]:
                schema["properties"][name]["description"] = text
        lock = lock_text(_requirements(path, parsed, root))
        metadata = {
            "summary": summary,
            "description": description,
            "lock": f"!inline {script_path}.script.lock",
            "kind": "script",
            "schema": schema,
        }
        if script_path in WORKER_TAGS:
            metadata["tag"] = WORKER_TAGS[script_path]
        files[path.with_suffix(".script.yaml")] = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=110)
        files[path.with_suffix(".script.lock")] = lock
    files[root / RESULT_SCHEMA_FILE] = result_schema()
    return files


def result_schema() -> str:
    """The JSON Schema of result.json, from the pydantic model publish writes it with."""
    from f.matter.merge import RESULT_SCHEMA, DocumentResult

    schema = DocumentResult.model_json_schema(by_alias=True, mode="serialization")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": RESULT_SCHEMA, **schema}
    return json.dumps(schema, indent=2) + "\n"


def stale(root: Path = ROOT) -> list[Path]:
    return [path for path, content in generate(root).items() if not path.exists() or path.read_text() != content]


def write(root: Path = ROOT) -> list[Path]:
    changed = []
    for path, content in generate(root).items():
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            changed.append(path)
    return changed


# ---------------------------------------------------------------------------------------------------------------


def _module_doc(tree: ast.Module) -> tuple[str, str]:
    doc = ast.get_docstring(tree) or ""
    first, _, rest = doc.partition("\n")
    return first.strip(), " ".join(rest.split("\n\n")[0].split()) if rest.strip() else ""


def _arg_descriptions(tree: ast.Module) -> dict[str, str]:
    """Google-style `Args:` of main()'s docstring; continuation lines join the previous parameter."""
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"), None)
    doc = ast.get_docstring(main) if main else None
    if not doc or "Args:" not in doc:
        return {}
    described: dict[str, str] = {}
    current = None
    for line in doc.split("Args:", 1)[1].splitlines():
        match = _ARG_LINE.match(line)
        if match and len(line) - len(line.lstrip()) <= 4:
            current = match.group(1)
            described[current] = match.group(2).strip()
        elif current and line.strip():
            described[current] += " " + line.strip()
        elif not line.strip() and described:
            current = None
    return described


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            modules.add(node.module)
    return {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] not in ("f", "u", "__future__")}


def _distribution_for(module: str, providers: dict[str, list[str]]) -> str:
    """The distribution that ships `module`. Namespace packages (`azure`) have several: pick the one whose files
    hold the module's own folder, e.g. azure/storage/blob -> azure-storage-blob."""
    candidates = providers.get(module.split(".")[0], [])
    if len(candidates) == 1:
        return _canonical(candidates[0])
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = "/".join(parts[:depth]) + "/"
        owners = [d for d in candidates if any(str(f).startswith(prefix) for f in md.files(d) or [])]
        if len(owners) == 1:
            return _canonical(owners[0])
    raise RuntimeError(f"cannot tell which installed distribution provides {module!r} (candidates: {candidates})")


def _requirements(path: Path, parsed: dict[str, dict], root: Path) -> set[str]:
    """Distributions the script needs: its own imports and those of the workspace modules it imports, closed
    over their declared dependencies."""
    seen_scripts, todo = set(), [str(path.relative_to(root).with_suffix(""))]
    modules: set[str] = set()
    while todo:
        script = todo.pop()
        if script in seen_scripts:
            continue
        seen_scripts.add(script)
        modules |= _imported_modules(root / f"{script}.py")
        todo.extend(parsed[script]["relative_imports"] or [])
    providers = md.packages_distributions()
    return _closure({_distribution_for(module, providers) for module in modules})


def _closure(names: set[str]) -> set[str]:
    environment = {"extra": ""}
    result, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in result:
            continue
        result.add(name)
        for line in md.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(_canonical(requirement.name))
    return result


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_text(distributions: set[str]) -> str:
    if not distributions:  # an empty lock reads as "missing" to `wmill lint --locks-required`; a comment does not
        return "# no third-party requirements\n"
    return "".join(f"{name}=={md.version(name)}\n" for name in sorted(distributions))
