"""Every `domainfm ...` command the documentation quotes exists and parses, so the docs cannot drift from the CLI.

Sources: README.md, modalities/*/README.md, notebooks/*.ipynb, the CLI's own --help examples, and the CLI
contract in DESIGN.md (../shared/DESIGN.md, skipped where that file is absent). A command is found in a code
line (fenced, indented or a notebook `!` line) or in inline backticks. Placeholders are handled as the docs
write them: `[optional ...]` parts are dropped (`[--out FILE]` is kept as `--out FILE`), `a|b` takes the first
choice, `embed/probe` names several verbs, and a lone verb in prose (`domainfm probe` prints ...) is checked
for existence only. `pretrain` commands with a named recipe are also resolved with
`load_recipe`, so a quoted override key that no longer exists fails too.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from foundation.cli import EPILOG, build_parser, parse_args

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT.parent / "shared" / "DESIGN.md"
# Verbs DESIGN's contract names that other branches are adding. The lead empties this list once they are merged;
# from then on a quoted command with any of them must parse like the rest.
PLANNED: set[str] = set()

CALL = re.compile(r"(?:^|[\s`!$(])(?:domainfm|-m foundation\.cli)\s+([^`#\n]*)")


def _code_lines(text: str) -> list[str]:
    """Lines that are code: inside ``` fences, indented by 4+ spaces, a notebook shell line, or inline `...`."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    ") or line.lstrip().startswith("!"):
            out.append(line.split(" # ")[0].split("  #")[0])  # drop trailing comments
        out.extend(re.findall(r"`([^`\n]+)`", line))
    return out


def _notebook_text(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) if c["cell_type"] == "markdown" else
                     "\n".join("    " + line for line in "".join(c["source"]).splitlines()) for c in cells)


def documented_commands() -> list[tuple[str, str]]:
    sources = {p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *sorted(ROOT.glob("modalities/*/README.md"))]}
    sources.update({p.relative_to(ROOT).as_posix(): _notebook_text(p) for p in sorted(ROOT.glob("notebooks/*.ipynb"))})
    sources["domainfm --help (EPILOG)"] = "\n".join("    " + line for line in EPILOG.splitlines())
    if DESIGN.exists():
        sources["DESIGN.md"] = DESIGN.read_text()
    found = []
    for where, text in sources.items():
        for code in _code_lines(text):
            for m in CALL.finditer(code):
                words = m.group(1).strip()
                if words and not words.startswith(("is ", "encoder")):
                    found.append((where, words))
    return sorted(set(found))


def _words(command: str) -> list[str]:
    """The quoted command as argv, placeholders resolved (see the module docstring)."""
    command = re.sub(r"\[(-[^\]]*)\]", r"\1", command)  # [--out FILE] -> --out FILE
    command = re.sub(r"\[[^\]]*\]", " ", command)  # [key=value ...] -> nothing
    words = shlex.split(command.replace("...", " "))
    return [w.split("|")[0] if "|" in w.strip("|") and "=" not in w else w for w in words]


def _verbs() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)


COMMANDS = documented_commands()


def test_the_docs_quote_commands_and_the_finder_sees_them():
    """Negative control for the finder: the README's own examples are among what it finds."""
    quoted = {c for _, c in COMMANDS}
    assert "recipes" in quoted and any(c.startswith("pretrain speech-mae data.root=") for c in quoted), sorted(quoted)[:20]
    assert any(w == "domainfm --help (EPILOG)" for w, _ in COMMANDS)


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}: {c[:60]}" for w, c in COMMANDS])
def test_documented_command_exists_and_parses(where, command):
    words = _words(command)
    while words and words[0] in ("-v", "--verbose"):  # `domainfm -v ...`: the global option, then maybe a command
        parse_args([words[0], "recipes"])
        words = words[1:]
    if not words:
        return
    if "/" in words[0] and not words[0].startswith(("/", ".")):  # `domainfm embed/probe/evaluate/demo`
        verbs = words[0].split("/")
    elif len(words) > 1 and set(words[1::2]) == {"|"}:  # `domainfm pretrain | align | finetune`
        verbs = words[0::2]
    else:
        verbs = [words[0]] if words else []
    unknown = [v for v in verbs if v not in _verbs() | PLANNED]
    assert not unknown, f"{where}: `domainfm {command}` names no command {unknown}; commands: {sorted(_verbs())}"
    if len(verbs) > 1 or len(words) == 1 or verbs[0] in PLANNED - _verbs():
        return  # verbs named in prose (`domainfm probe` prints...), or a verb still being built: existence is the check
    try:
        args = parse_args(words)
    except SystemExit as err:
        pytest.fail(f"{where}: `domainfm {command}` does not parse (argparse exit {err.code}; argv {words})")
    if args.command == "pretrain" and not args.recipe.isupper():  # a named recipe: its overrides must resolve too
        from foundation.recipes import load_recipe

        load_recipe(args.recipe, args.overrides)


def test_a_stale_command_is_caught():
    """Negative control: a renamed verb, a removed option and an override key that does not exist all fail."""
    assert "embedd" not in _verbs() | PLANNED
    with pytest.raises(SystemExit):
        parse_args(_words("embed exported/speech recordings/ --output emb.npz"))
    from foundation.recipes import RecipeError, load_recipe

    args = parse_args(_words("pretrain pointcloud-mae data.root=scans/ adapter.column=kitti"))
    with pytest.raises(RecipeError, match="adapter.column"):
        load_recipe(args.recipe, args.overrides)
