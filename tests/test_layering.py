"""Import layering, read from the source with ``ast``: every module has a rank in ``RANKS`` and
imports only modules of lower rank; the stage folders (text, model, training, decoding, serve,
export) import only down the pipeline; the CLI is the only Typer user, and the light modules
(recipes, data reading, scoring) never pull in torch, not even through another module."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nmt_cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(name: str, level: int, current: str) -> str:
    if not level:
        return name
    base = current.split(".")
    if not is_package(current):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


@lru_cache(maxsize=None)
def imports(name: str, top_level_only: bool = False) -> frozenset[str]:
    """Every module ``name`` imports (anywhere in the file, or only at module level)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(node.module or "", node.level, name)
            found.add(target)
            for alias in node.names:  # `from nmt_cli.model import encoder` imports a module
                if f"{target}.{alias.name}" in MODULES:
                    found.add(f"{target}.{alias.name}")
    return frozenset(found)


def closure(name: str, top_level_only: bool = False) -> set[str]:
    """Everything importing ``name`` loads, following nmt_cli modules (and their packages)."""
    parts = name.split(".")  # importing ``name`` runs its packages' __init__ first
    seen, external = set(), set()
    todo = [name] + [".".join(parts[:i]) for i in range(1, len(parts))]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for imp in imports(mod, top_level_only):
            parts = imp.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                prefix = ".".join(parts[:i])
                if prefix in MODULES:
                    todo.append(prefix)
            if imp.split(".")[0] != "nmt_cli":
                external.add(imp.split(".")[0])
    return external | {m for m in seen if m != name}


# The order of layers, lowest first. A module may import only modules of a strictly lower rank, so
# two modules of one rank can never import each other: training and ``translate`` share a rank,
# so the trainer validates through ``inference`` but never reaches the translate command. A new
# module gets a rank here from whoever adds it: above everything it imports, below its users.
RANKS = {
    # ground floor: nothing of nmt_cli below them (the stage folders' __init__ import nothing)
    "nmt_cli": 0, "nmt_cli.errors": 0, "nmt_cli.ids": 0, "nmt_cli.files": 0, "nmt_cli.faults": 0,
    "nmt_cli.text": 0, "nmt_cli.training": 0, "nmt_cli.decoding": 0,
    # settings, and small helpers over torch and the file system
    "nmt_cli.schema": 0.5, "nmt_cli.model_settings": 0.7,
    "nmt_cli.config": 1, "nmt_cli.runtime": 1, "nmt_cli.training.distributed": 1,
    "nmt_cli.reports": 1, "nmt_cli.training.loss": 1,
    "nmt_cli.recipes": 2, "nmt_cli.training.metrics": 2,
    # text: raw text -> token shards (and the text-only scoring and plots)
    "nmt_cli.text.normalize": 3, "nmt_cli.text.filters": 3,
    "nmt_cli.text.bitext": 4,
    "nmt_cli.text.tokenizer": 5, "nmt_cli.scoring": 5, "nmt_cli.plot": 5,
    "nmt_cli.text.shards": 5, "nmt_cli.text.preprocess": 6, "nmt_cli.decoding.hypotheses": 6,
    "nmt_cli.decoding.nbest": 6,
    # data and model
    "nmt_cli.model.dropout": 6.5,
    "nmt_cli.data": 7, "nmt_cli.model.attention": 7, "nmt_cli.model.encoder": 7,
    "nmt_cli.model.contract": 7,
    "nmt_cli.model.decoder": 8, "nmt_cli.model.transformer_state": 7, "nmt_cli.model.rnn": 9, "nmt_cli.model.transformer": 9,
    "nmt_cli.model.lm": 9.5,
    "nmt_cli.model": 10,
    "nmt_cli.checkpoint": 11,
    # decoding pieces, and the training helpers beside them
    "nmt_cli.decoding.penalties": 12, "nmt_cli.decoding.ensemble": 12,
    "nmt_cli.decoding.fusion": 12, "nmt_cli.decoding.lm": 12.5,
    "nmt_cli.decoding.alignment": 12,
    "nmt_cli.training.optim": 12, "nmt_cli.training.runs": 12, "nmt_cli.training.average": 12,
    "nmt_cli.training.update": 12, "nmt_cli.training.ema": 1,
    "nmt_cli.decoding.search": 13, "nmt_cli.decoding.constraints": 6.5,
    "nmt_cli.decoding.constrained": 13.5,
    "nmt_cli.decoding.inference": 14,
    # the CTranslate2 engine: inference's clean-up and results, below translate and serve; and
    # the trainer's validation, which decodes through inference
    "nmt_cli.decoding.ct2": 14.5, "nmt_cli.training.validation": 14.5,
    # the one door to both engines, below every caller
    "nmt_cli.decoding.engine": 14.7,
    # reranking's features over the engine seam, shared by the rerank and tune commands
    "nmt_cli.decoding.features": 14.8,
    # the two ends, which must not know each other
    "nmt_cli.training.trainer": 15, "nmt_cli.decoding.translate": 15,
    "nmt_cli.decoding.score": 15, "nmt_cli.decoding.rerank": 15, "nmt_cli.decoding.tune": 15,
    # the server over decoding (and exporters beside it)
    "nmt_cli.serve.settings": 1,
    "nmt_cli.serve.batcher": 16, "nmt_cli.serve.page": 16, "nmt_cli.serve.protocol": 16,
    "nmt_cli.serve.app": 17, "nmt_cli.serve": 18,
    "nmt_cli.export.ct2": 16, "nmt_cli.export": 16,
    "nmt_cli.cli.app": 18.5, "nmt_cli.cli.train": 19, "nmt_cli.cli.decode": 19,
    "nmt_cli.cli.rerank": 19,
    "nmt_cli.cli": 19.5,
    "nmt_cli.__main__": 20,
}
DECODING = {name for name in MODULES if name.startswith("nmt_cli.decoding.")}
TRAINING = {name for name in MODULES if name.startswith("nmt_cli.training.")}

# The stage folders, and the folders each may import from (the modules at the top of nmt_cli/
# are placed by RANKS alone): text -> model -> training and decoding -> serve and export, where
# training may validate through decoding but decoding never reaches training.
STAGE_IMPORTS = {
    "text": {"text"},
    "model": {"text", "model"},
    "decoding": {"text", "model", "decoding"},
    "training": {"text", "model", "decoding", "training"},
    "serve": {"text", "model", "decoding", "training", "serve"},
    "export": {"text", "model", "decoding", "training", "export"},
}


def stage(name: str) -> str | None:
    """The stage folder ``name`` sits in (``nmt_cli.text.bitext`` -> ``text``), or None."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGE_IMPORTS else None


def internal_imports(name: str) -> set[str]:
    return {i for i in imports(name) if i in MODULES}


def rank_violations(graph: dict[str, set[str]], ranks: dict[str, int]) -> list[str]:
    """Every import in ``graph`` (module -> the nmt_cli modules it imports) that does not go to a
    strictly lower rank, as a sentence that says what to do."""
    found = []
    for name in sorted(graph):
        for target in sorted(graph[name]):
            if ranks[target] >= ranks[name]:
                found.append(f"{name} (rank {ranks[name]}) imports {target} (rank "
                             f"{ranks[target]}); a module may import only lower ranks: move the "
                             "shared code down a layer, or change RANKS if the order is wrong")
    return found


def test_every_module_has_a_rank():
    missing = sorted(set(MODULES) - set(RANKS))
    assert not missing, (f"{', '.join(missing)}: no rank in RANKS of tests/test_layering.py; "
                         "whoever adds a module gives it a rank there, above every module it "
                         "imports and below every module that imports it")
    stale = sorted(set(RANKS) - set(MODULES))
    assert not stale, f"RANKS in tests/test_layering.py names modules that are gone: {stale}"


def test_every_import_goes_to_a_lower_rank():
    graph = {name: internal_imports(name) for name in MODULES if name in RANKS}
    problems = rank_violations(graph, RANKS)
    assert not problems, "\n".join(problems)


def test_the_rank_check_sees_an_upward_import():
    """A control: the check above does catch the imports it exists to stop."""
    graph = {name: internal_imports(name) for name in RANKS}
    trainer, translate = "nmt_cli.training.trainer", "nmt_cli.decoding.translate"
    graph[trainer] = graph[trainer] | {translate}
    problems = rank_violations(graph, RANKS)
    assert len(problems) == 1 and f"{trainer} (rank 15) imports {translate}" in problems[0]
    assert rank_violations({"nmt_cli.ids": {"nmt_cli.config"}}, RANKS)


def test_decoding_never_imports_training():
    assert {"nmt_cli.decoding.search", "nmt_cli.decoding.translate"} <= DECODING  # the folders
    assert {"nmt_cli.training.trainer", "nmt_cli.training.optim"} <= TRAINING  # are found
    for name in DECODING:
        assert not internal_imports(name) & TRAINING, (name, sorted(internal_imports(name)))


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import in ``graph`` from a stage folder into a folder it may not import from."""
    found = []
    for name in sorted(graph):
        if stage(name) is None:
            continue
        for target in sorted(graph[name]):
            if stage(target) is not None and stage(target) not in STAGE_IMPORTS[stage(name)]:
                found.append(f"{name} ({stage(name)}/) imports {target} ({stage(target)}/); "
                             f"{stage(name)}/ may import only from "
                             f"{', '.join(sorted(STAGE_IMPORTS[stage(name)]))}")
    return found


def test_stage_folders_import_down_the_pipeline():
    graph = {name: internal_imports(name) for name in MODULES}
    problems = stage_violations(graph)
    assert not problems, "\n".join(problems)


def test_the_stage_check_sees_an_import_up_the_pipeline():
    """A control: text reaching decoding, and decoding reaching training, are both caught."""
    assert {stage(name) for name in MODULES} >= set(STAGE_IMPORTS)  # every folder is there
    graph = {"nmt_cli.text.bitext": {"nmt_cli.decoding.search"},
             "nmt_cli.decoding.search": {"nmt_cli.training.optim"},
             "nmt_cli.training.trainer": {"nmt_cli.decoding.inference"}}  # allowed
    problems = stage_violations(graph)
    assert len(problems) == 2, problems
    assert problems[0].startswith("nmt_cli.decoding.search (decoding/) imports nmt_cli.training")
    assert problems[1].startswith("nmt_cli.text.bitext (text/) imports nmt_cli.decoding")


def test_the_package_is_found():
    assert {"nmt_cli.cli", "nmt_cli.config", "nmt_cli.model.decoder",
            "nmt_cli.decoding.search"} <= set(MODULES)


def test_only_the_cli_imports_typer():
    users = {name for name in MODULES if any(i.split(".")[0] == "typer" for i in imports(name))}
    assert users == {"nmt_cli.cli", "nmt_cli.cli.app", "nmt_cli.cli.train", "nmt_cli.cli.decode",
                     "nmt_cli.cli.rerank"}


# The modules that implement a command. None of them imports another: what two commands share
# lives below them (the engine seam, in decoding/), and the CLI package sits above them all.
COMMANDS = {"translate": {"nmt_cli.decoding.translate"}, "score": {"nmt_cli.decoding.score"},
            "rerank": {"nmt_cli.decoding.rerank"}, "tune": {"nmt_cli.decoding.tune"},
            "serve": {n for n in MODULES if n == "nmt_cli.serve" or n.startswith("nmt_cli.serve.")},
            "cli": {n for n in MODULES if n == "nmt_cli.cli" or n.startswith("nmt_cli.cli.")}}


def command_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for command, members in COMMANDS.items():
        for name in sorted(members):
            for target in sorted(graph.get(name, ())):
                other = [c for c, m in COMMANDS.items() if c != command and target in m]
                if other:
                    found.append(f"{name} ({command}) imports {target} ({other[0]})")
    return found


def test_no_command_module_imports_another():
    """translate and serve never reach each other (nor the CLI); only the CLI calls into them."""
    graph = {name: internal_imports(name) for name in MODULES}
    cli = COMMANDS["cli"]
    for name in cli:  # the CLI calls the commands' plain functions: that is its job
        graph[name] = {t for t in graph[name] if t in cli}
    problems = command_violations(graph)
    assert not problems, "\n".join(problems)


def test_the_command_check_sees_serve_importing_translate():
    """A control: the import that serve used to make is caught, and so is one into the CLI."""
    assert len(COMMANDS["serve"]) > 2 and len(COMMANDS["cli"]) > 2
    graph = {"nmt_cli.serve.app": {"nmt_cli.decoding.translate"},
             "nmt_cli.decoding.translate": {"nmt_cli.cli.app"}}
    assert len(command_violations(graph)) == 2


def test_no_engine_branch_outside_the_engines():
    """Which engine holds a model is decided in decoding/engine.py: translate and serve never
    import the CTranslate2 engine, the checkpoint reader or nmt's own search directly."""
    engines = {"nmt_cli.decoding.ct2", "nmt_cli.decoding.inference", "nmt_cli.decoding.search",
               "nmt_cli.checkpoint", "nmt_cli.runtime"}
    for name in COMMANDS["translate"] | COMMANDS["serve"] | COMMANDS["rerank"] | COMMANDS["tune"]:
        assert not internal_imports(name) & engines, (name, sorted(internal_imports(name)))


@pytest.mark.parametrize("name", ["nmt_cli.config", "nmt_cli.errors", "nmt_cli.recipes",
                                  "nmt_cli.text.bitext", "nmt_cli.scoring", "nmt_cli.files",
                                  "nmt_cli.decoding.hypotheses", "nmt_cli.decoding.ct2",
                                  "nmt_cli.decoding.nbest"])
def test_light_modules_never_import_torch(name):
    loaded = closure(name)
    assert "torch" not in loaded, sorted(loaded)
    assert "typer" not in loaded


def test_cli_module_level_stays_light():
    loaded = closure("nmt_cli.cli", top_level_only=True)
    assert not {"torch", "sentencepiece", "numpy", "sacrebleu"} & loaded, sorted(loaded)


def test_translate_reaches_torch_only_for_a_checkpoint():
    """An exported CTranslate2 model is translated without torch: the translate command's
    module level (and everything it pulls in) stays off torch, which only a checkpoint loads."""
    loaded = closure("nmt_cli.decoding.translate", top_level_only=True)
    assert not {"torch", "nmt_cli.checkpoint", "nmt_cli.decoding.inference",
                "nmt_cli.decoding.search"} & loaded, sorted(loaded)
    assert "torch" in closure("nmt_cli.decoding.translate")  # a control: a checkpoint loads it


@pytest.mark.parametrize("name", ["nmt_cli.decoding.rerank", "nmt_cli.decoding.tune"])
def test_rerank_reaches_torch_only_for_a_checkpoint(name):
    """Reranking cached features, or with an exported reverse model, runs without torch."""
    loaded = closure(name, top_level_only=True)
    assert not {"torch", "nmt_cli.checkpoint", "nmt_cli.decoding.inference"} & loaded, \
        sorted(loaded)


def test_model_does_not_depend_on_the_tokenizer_or_io():
    for name in [n for n in MODULES if n.startswith("nmt_cli.model")]:
        loaded = closure(name)
        assert "nmt_cli.text.tokenizer" not in loaded, (name, sorted(loaded))
        assert "sentencepiece" not in loaded and "typer" not in loaded


def test_search_is_free_of_io_and_cli():
    loaded = closure("nmt_cli.decoding.search")
    assert not {"nmt_cli.cli", "nmt_cli.decoding.translate", "nmt_cli.training.trainer", "typer",
                "rich"} & loaded


def test_the_import_scan_sees_torch_where_it_is():
    """A control for the checks above: the scan does find torch behind a chain of modules."""
    assert "torch" in closure("nmt_cli.training.trainer")
    assert {"nmt_cli.model", "nmt_cli.model.rnn", "torch"} <= closure("nmt_cli.checkpoint")
    assert "torch" in closure("nmt_cli.cli")  # lazily, inside the commands
    # a module's own packages run first: torch in a stage folder's __init__ would be seen
    assert {"nmt_cli", "nmt_cli.decoding"} <= closure("nmt_cli.decoding.hypotheses")


def test_the_server_package_loads_without_its_extra():
    """``nmt serve`` can say which extra to install: FastAPI, uvicorn and torch load later."""
    loaded = closure("nmt_cli.serve", top_level_only=True)
    assert not {"fastapi", "uvicorn", "starlette", "torch"} & loaded, sorted(loaded)


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            or isinstance(node, ast.Name) and node.id == "environ")


def environment_keys(source: str) -> list[str]:
    """The key of every ``os.environ[...]``, ``os.environ.get(...)`` (or ``pop``,
    ``setdefault``) and ``os.getenv(...)`` in ``source``, as written."""
    keys = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            keys.append(ast.unparse(node.slice))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
            func = node.func
            if (func.attr in ("get", "pop", "setdefault") and _is_environ(func.value)
                    or func.attr == "getenv"):
                keys.append(ast.unparse(node.args[0]))
    return keys


def fault_switches(sources: dict[str, str]) -> list[str]:
    """Every module (name -> source) that names NMT_FAULT or reads a fault from the environment."""
    found = []
    for name, source in sorted(sources.items()):
        if "NMT_FAULT" in source:
            found.append(f"{name} mentions NMT_FAULT")
        found += [f"{name} reads the environment for a fault ({key})"
                  for key in environment_keys(source) if "FAULT" in key.upper()]
    return found


def test_faults_are_injected_through_the_seam_not_the_environment():
    """A test injects a fault by replacing ``nmt_cli.faults.point``; production code holds no
    fault switch of its own, and the seam depends on nothing it could be injected into."""
    sources = {name: path.read_text(encoding="utf-8") for name, path in MODULES.items()}
    problems = fault_switches(sources)
    assert not problems, "\n".join(problems) + ("\ncall nmt_cli.faults.point(NAME, ...) there, "
                                               "and let the test replace it")
    assert not {i for i in imports("nmt_cli.faults") if i.split(".")[0] == "nmt_cli"}
    assert not environment_keys(sources["nmt_cli.faults"])
    callers = {name for name, source in sources.items() if "faults.point(" in source}
    assert {"nmt_cli.checkpoint", "nmt_cli.training.trainer", "nmt_cli.serve.app"} <= callers


def test_the_fault_check_sees_a_switch_in_the_environment():
    """A control: the fault switches this code once had are caught."""
    old = {"nmt_cli.checkpoint": 'FAULT_ENV = "NMT_FAULT"\n',
           "nmt_cli.training.trainer": "fault = os.environ.get(FAULT_ENV, '')\n",
           "nmt_cli.serve.app": "delay = os.getenv('SERVE_FAULTS')\n",
           "nmt_cli.runtime": "spec = environ['TEST_FAULT'] if x else os.environ.get('HOME')\n"}
    problems = fault_switches(old)
    assert len(problems) == 4, problems
    assert environment_keys("os.environ.get('A'); os.environ['B']; os.getenv(C)") == \
        ["'A'", "'B'", "C"]
