"""The README and docs/ stay true: every relative link resolves, and every command in their shell blocks is
accepted by the CLI it names (flags, subcommands, pass pipelines), names scripts and tests that exist."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
# Pages other branches are writing at the same time; the README links them already. They land at merge,
# and this exemption goes with them.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_BLOCK = re.compile(r"```(?:bash|sh)\n(.*?)```", re.S)
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_readme_starts_with_install_then_test():
    readme = (ROOT / "README.md").read_text()
    first_block = SHELL_BLOCK.search(readme).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["./install.sh && aero-compile", "python -m pytest -q"]
    assert (ROOT / "install.sh").is_file()
    assert len(readme.splitlines()) < 200, "the README is one screen; topics go to docs/"


def _anchors(page: Path) -> set[str]:
    """The heading anchors GitHub renders for a Markdown page (lower case, punctuation dropped, spaces to
    hyphens, repeats numbered)."""
    seen: dict[str, int] = {}
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' comment in a code block is no heading
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            file_part, _, anchor = target.partition("#")
            path = (page.parent / file_part).resolve() if file_part else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
                broken.append(f"{_name(page)}: {target}")
    assert broken == []


def _shell_commands():
    """(page, words) of every command line in the pages' bash blocks, continuation lines joined."""
    for page in PAGES:
        for block in SHELL_BLOCK.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                for words in _commands_of(line):
                    while words and ENV_ASSIGNMENT.match(words[0]):
                        words = words[1:]
                    if words:
                        yield page, words


def _commands_of(line: str):
    """The commands of one shell line: split at &&, ||, ;, & and | outside quotes (shlex's own tokenizer)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = []
    for token in lexer:
        if token in ("&&", "||", ";", "&", "|"):
            yield words
            words = []
        else:
            words.append(token)
    yield words


def _aero_compile_argv(words):
    """The argument list after ``aero-compile`` (or ``python -m aero_compile``, ``torchrun ... -m aero_compile``)."""
    if words[0] == "aero-compile":
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1:words.index("-m") + 2] == ["aero_compile"]:
        return words[words.index("-m") + 2:]
    return None


COMMANDS = [(page, words) for page, words in _shell_commands() if _aero_compile_argv(words) is not None]


@pytest.mark.parametrize("page, words", COMMANDS, ids=[f"{_name(p)}: {' '.join(w)[:70]}" for p, w in COMMANDS])
def test_every_documented_command_is_accepted_by_the_cli(page, words, capsys):
    from aero_compile import cli
    from aero_compile.pass_manager import PassManager
    from aero_compile.targets.private.keys import build_parser as keys_parser
    from aero_compile.targets.private.link.check import build_parser as link_check_parser
    from aero_compile.training.cli import build_parser as train_parser

    argv = _aero_compile_argv(words)
    if argv[:1] == ["train"] and argv[1:2] == ["..."]:
        argv[1] = "gpt2-tiny"  # "train ... --resume": the run's model, as above
    argv = [word for word in argv if word != "..."]  # "the other flags, as above"
    try:
        if argv[:1] == ["calibrate"]:
            assert cli.main([*argv, "--help"]) == 0, capsys.readouterr().err
            return
        subcommand_parsers = {"train": train_parser, "keys": keys_parser, "link-check": link_check_parser}
        if argv[:1] and argv[0] in subcommand_parsers:
            subcommand_parsers[argv[0]]().parse_args(argv[1:])
            return
        args = cli.build_parser().parse_args(argv)
    except SystemExit as exit:
        if exit.code:
            pytest.fail(f"{_name(page)}: `{' '.join(words)}` is refused: {capsys.readouterr().err.strip()}")
        return
    PassManager.from_pipeline(args.passes)  # raises AeroError naming the pass or option


def test_documented_scripts_and_test_files_exist():
    """Every benchmark script and test file a page names (in a command or in prose) is in the repository."""
    missing = []
    for page in PAGES:
        for path in sorted(set(re.findall(r"\b((?:benchmarks|tests)/[\w/]+\.py)\b", page.read_text()))):
            if not (ROOT / path).is_file():
                missing.append(f"{_name(page)}: {path}")
    assert missing == []
    assert COMMANDS, "no aero-compile command found in the docs: the block pattern is broken"
