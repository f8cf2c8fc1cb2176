"""The documentation stays true to the code: the generated config reference, the files it names."""
import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "RESULTS.md", *sorted((REPO / "docs").glob("*.md"))]


def _config_reference_script():
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "docs" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_design_config_reference_is_generated_from_the_schema():
    script = _config_reference_script()
    text = script.DESIGN.read_text()
    assert text.count(script.START) == 1 and text.count(script.END) == 1
    assert script.render(text) == text, \
        "docs/DESIGN.md's config reference is stale: run python docs/config_reference.py"


def test_config_reference_lists_every_key_once():
    from refseg.config import config_fields, format_config_reference

    text = format_config_reference()
    for f in config_fields():
        assert text.count(f"| `{f.key}` |") == 1, f.key


def test_files_named_in_the_docs_exist():
    """Every script, config and doc path the docs tell a reader to run or open is in the repository."""
    pattern = re.compile(r"(?<![\w/.-])((?:benchmarks|docs|configs|tests)/[\w+.-]+\.(?:py|yaml|md))")
    missing = []
    for doc in DOCS:
        for path in set(pattern.findall(doc.read_text())):
            if not (REPO / path).is_file():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_docs_are_dated_not_numbered_by_rounds_of_work():
    wording = re.compile(r"\bsessions?\b|\bround(s)? of (work|experiments)\b|\bround \d", re.IGNORECASE)
    hits = [f"{doc.name}:{n}" for doc in DOCS for n, line in enumerate(doc.read_text().splitlines(), 1)
            if wording.search(line)]
    assert not hits, hits
