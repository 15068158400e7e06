"""The README is a short map; every relative link in it and in docs/ leads somewhere."""

import glob
import os
import re
from urllib.parse import unquote

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$", re.M)
EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text):
    """The text without fenced code blocks (a `# comment` in one is no heading)."""
    return FENCE.sub("", text)


def anchor(heading):
    """GitHub's anchor for a heading: lowercase, punctuation dropped except hyphens and
    spaces (and underscores, which GitHub keeps), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # a link in a heading: its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor the headings of a Markdown file produce (repeats get -1, -2, ...)."""
    seen, out = {}, set()
    for match in HEADING.finditer(_prose(open(path, encoding="utf-8").read())):
        base = anchor(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path):
    """(line, target) of every Markdown link in a file, code excluded."""
    text = _prose(open(path, encoding="utf-8").read())
    text = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)   # code is no link
    for match in LINK.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, match.group(2)


def broken_links(paths):
    problems = []
    for path in paths:
        for line, target in links(path):
            if not target or target.lower().startswith(EXTERNAL):
                continue
            file_part, _, fragment = target.partition("#")
            where = f"{os.path.relpath(path, ROOT)}:{line}: ({target})"
            dest = (os.path.normpath(os.path.join(os.path.dirname(path), unquote(file_part)))
                    if file_part else path)
            if not os.path.exists(dest):
                problems.append(f"{where} no such file {os.path.relpath(dest, ROOT)}")
                continue
            if fragment:
                if not dest.endswith(".md") or os.path.isdir(dest):
                    problems.append(f"{where} an anchor into a file that is not Markdown")
                elif unquote(fragment) not in anchors(dest):
                    problems.append(f"{where} no heading in {os.path.relpath(dest, ROOT)} "
                                    f"makes #{fragment}")
    return problems


def test_the_docs_exist_and_the_readme_links_to_every_page():
    pages = PAGES[1:]
    assert pages, "docs/ holds no Markdown pages"
    readme_targets = {os.path.normpath(os.path.join(ROOT, t.partition("#")[0]))
                      for _, t in links(README)}
    unlinked = [os.path.relpath(p, ROOT) for p in pages if p not in readme_targets]
    assert not unlinked, f"README.md does not link to {unlinked}"


def test_every_relative_link_resolves():
    problems = broken_links(PAGES)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_a_short_map():
    size = os.path.getsize(README)
    assert size < 15_000, f"README.md is {size} bytes; move detail into docs/ (limit 15,000)"


@pytest.mark.parametrize("heading, expected", [
    ("airbench94 against the original, and which recipe is `fast`",
     "airbench94-against-the-original-and-which-recipe-is-fast"),
    ("Your model, CIFAR-100, TensorBoard", "your-model-cifar-100-tensorboard"),
    ("Several devices, several hosts (tf.distribute)", "several-devices-several-hosts-tfdistribute"),
    ("Results (JSON schema, version 1)", "results-json-schema-version-1"),
    ("Measured on this project's development machine",
     "measured-on-this-projects-development-machine"),
])
def test_anchor_follows_githubs_rule(heading, expected):
    assert anchor(heading) == expected


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## Second part, here\n\n"
                                   "[ok](#second-part-here) [ok](b.md#b) [code](x.md)\n"
                                   "`[not a link](missing.md)`\n\n```\n# not a heading\n```\n"
                                   "[bad file](missing.md) [bad anchor](b.md#nope) "
                                   "[bad here](#not-a-heading) [web](https://example.com/x)\n")
    (tmp_path / "b.md").write_text("# B\n")
    (tmp_path / "x.md").write_text("x\n")
    problems = broken_links([str(tmp_path / "a.md")])
    assert len(problems) == 3, problems
    assert "missing.md" in problems[0] and "#nope" in problems[1] and "#not-a-heading" in problems[2]


@pytest.mark.parametrize("page", [README, os.path.join(ROOT, "docs", "recipes.md")])
def test_the_recipe_tables_say_what_each_recipe_is(page):
    """Each recipe of the registry has a row, and its epochs, batch and target columns are
    the registry's: a recipe changed in config.py fails here until the tables follow."""
    from fastcifar.config import RECIPES

    rows = {}
    for line in open(page, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.match(r"`(\w+)`", cells[0]) if len(cells) == 6 else None
        if m:
            rows[m.group(1)] = cells
    assert set(rows) == set(RECIPES), f"{page}: rows {sorted(rows)} vs {sorted(RECIPES)}"
    for name, spec in RECIPES.items():
        _, _, _, epochs, batch, target = rows[name]
        assert epochs == f"{spec['epochs']:g}", (name, epochs)
        assert batch == str(spec["batch_size"]), (name, batch)
        want = "none" if spec.get("target", 0.94) is None else f"{100 * spec['target']:g}%"
        assert target.startswith(want), (name, target)
