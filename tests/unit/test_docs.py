"""The manual and the code name only what exists.

- every relative link in README.md, docs/, ops/ and deploy/README.md opens a file (and its anchor a heading);
- every repository path those docs name in backticks exists;
- every path a docstring or comment under stripemeter/ names exists (``adapters/postgres/pushes.py``,
  ``migrate.py``), and a ``path/module.name`` reference names something the module defines;
- README.md stays a manual: at most 300 lines.

A path resolves against the repository root, the package (stripemeter/) or the naming file's own folder.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stripemeter"
README_MAX_LINES = 300

MANUAL = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "ops").glob("*.md")])
# deploy/README.md names the manifests relative to deploy/k8s/: only its links are checked
DOCS = [*MANUAL, ROOT / "deploy" / "README.md"]

# Path-looking text that is not a file of the repository, each with the reason.
NOT_FILES = {
    "schemas/migrations/NNNN_name.sql": "the pattern a migration's file name follows",
    "kafka-topics.sh": "one of Kafka's own scripts, run from the broker's jars",
}
RUN_TIME = (".stack/",)  # the local stack's state (STRIPEMETER_STATE_DIR), written when it runs

EXTENSIONS = ("py", "sql", "md", "json", "yml", "yaml", "toml", "xml", "lock", "cfg", "ini", "sh", "txt")
_EXT = "|".join(EXTENSIONS)
# a file name with an extension, possibly under folders: `core/counting.py`, `migrate.py`
FILE_REF = re.compile(rf"(?<![\w./~$<*{{:@-])((?:[\w.-]+/)*[\w-][\w.-]*\.(?:{_EXT}))(?![\w/-])")
# a module's name inside it: `adapters/postgres/pushes.mapping_changed`
NAME_REF = re.compile(r"(?<![\w./~$<*{:@-])((?:[\w-]+/)+[\w-]+)\.([A-Za-z_]\w*)(?![\w/(-]|\.\w)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")  # a code span may wrap onto the next line
# a code span that is a repository path: folders and a name, or a file name with an extension
PATH_SPAN = re.compile(rf"(?:[\w.-]+/)+[\w.-]*|[\w-][\w.-]*\.(?:{_EXT})")


def _resolves(ref: str, near: Path) -> bool:
    return any((base / ref).exists() for base in (ROOT, PACKAGE, near))


def _comments_and_docstrings(path: Path) -> Iterator[tuple[int, str]]:
    source = path.read_text()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                yield node.body[0].lineno, docstring


def _defines(module: Path, name: str) -> bool:
    """Whether the module's top level defines ``name`` (a function, class or assigned name)."""
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined = [node.name]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined = [target.id for target in targets if isinstance(target, ast.Name)]
        else:
            continue
        if name in defined:
            return True
    return False


def _name_ref_problem(folder_module: str, name: str, near: Path) -> str | None:
    modules = [base / f"{folder_module}.py" for base in (ROOT, PACKAGE, near)]
    module = next((m for m in modules if m.is_file()), None)
    if module is None:
        return f"{folder_module}.py does not exist"
    if not _defines(module, name):
        return f"{module.relative_to(ROOT)} defines no {name}"
    return None


def _code_references() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, text in _comments_and_docstrings(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            for match in FILE_REF.finditer(text):
                ref = match.group(1)
                if ref not in NOT_FILES and not _resolves(ref, path.parent):
                    problems.append(f"{where} names {ref}")
            for match in NAME_REF.finditer(text):
                if match.group(2) in EXTENSIONS or match.group(0) in NOT_FILES:
                    continue
                problem = _name_ref_problem(match.group(1), match.group(2), path.parent)
                if problem is not None:
                    problems.append(f"{where} names {match.group(0)}: {problem}")
    return problems


def _doc_problems(doc: Path, paths: bool) -> list[str]:
    text = doc.read_text()
    text_without_blocks = re.sub(r"```.*?```", "", text, flags=re.S)
    problems = []
    for match in LINK.finditer(text_without_blocks):
        target = match.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            problems.append(f"link to {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            problems.append(f"link to {target}: no such heading")
    for match in CODE_SPAN.finditer(text_without_blocks) if paths else ():
        span = " ".join(match.group(1).split())
        if not PATH_SPAN.fullmatch(span) or span in NOT_FILES or span.startswith(("/", "~", "..", *RUN_TIME)):
            continue
        if not _resolves(span, doc.parent):
            problems.append(f"`{span}`: no such file or folder")
    return [f"{doc.relative_to(ROOT)}: {problem}" for problem in problems]


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors: a heading lower-cased, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*?)\s*$", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_link_and_path_a_doc_names_exists(doc: Path) -> None:
    assert _doc_problems(doc, paths=doc in MANUAL) == []


def test_every_path_a_docstring_or_comment_names_exists() -> None:
    assert _code_references() == []


def test_the_readme_is_a_manual_of_at_most_300_lines() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail into docs/"


def test_the_reference_patterns_find_what_they_should() -> None:
    """The patterns themselves: what counts as a path, what does not."""
    found = [m.group(1) for m in FILE_REF.finditer("see db/pushes.py, migrate.py and https://x.io/a.py")]
    assert found == ["db/pushes.py", "migrate.py"]
    assert [m.group(0) for m in NAME_REF.finditer("(db/pushes.FOLLOW), core/push_plan.targets.")] == [
        "db/pushes.FOLLOW",
        "core/push_plan.targets",
    ]
    assert PATH_SPAN.fullmatch("stripemeter/streams/") and PATH_SPAN.fullmatch("pyproject.toml")
    assert not PATH_SPAN.fullmatch("usage.events") and not PATH_SPAN.fullmatch("stripemeter stack up")
