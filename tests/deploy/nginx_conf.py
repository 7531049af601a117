"""A small reader of nginx configuration: enough to look up directives, not to run them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

_TOKEN = re.compile(r"""#[^\n]*|"(?:\\.|[^"])*"|'(?:\\.|[^'])*'|[{};]|[^\s{};]+""")


@dataclass
class Directive:
    """``name args...;`` or ``name args... { children }``."""

    name: str
    args: list[str]
    children: list[Directive] = field(default_factory=list)

    def find(self, name: str) -> Iterator[Directive]:
        """Every directive of that name in this block and the blocks inside it."""
        for child in self.children:
            if child.name == name:
                yield child
            yield from child.find(name)

    def first(self, name: str) -> Directive:
        """The first such directive directly in this block."""
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(f"no {name} in {self.name} {' '.join(self.args)}")

    def values(self, name: str) -> list[list[str]]:
        """The arguments of each directive of that name directly in this block."""
        return [child.args for child in self.children if child.name == name]


def parse(text: str) -> Directive:
    """The whole file as the children of a root block; raises on unbalanced braces."""
    root = Directive("(root)", [])
    stack = [root]
    words: list[str] = []
    for token in _TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token == ";":
            stack[-1].children.append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            block = Directive(words[0], words[1:])
            stack[-1].children.append(block)
            stack.append(block)
            words = []
        elif token == "}":
            if len(stack) == 1 or words:
                raise ValueError("unbalanced } in nginx configuration")
            stack.pop()
        else:
            words.append(token.strip("\"'"))
    if len(stack) != 1 or words:
        raise ValueError("unterminated block or directive in nginx configuration")
    return root
