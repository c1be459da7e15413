"""Node-name patterns, the paper's ``m1["conv[1,3,5]"]``: what DQL selectors, construct's
edits and evaluate's per-layer settings (``config.net["conv*"].lr``) match names with.
Pure ``re`` (no torch), a leaf every layer may use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def node_pattern(pattern: str) -> str:
    """The paper's node-name patterns as an anchored regular expression: ``*`` any run
    of characters, ``?`` one character, ``[1,3,5]`` one of the listed alternatives (an
    alternative ``a-c`` of single characters is a range), ``($1)`` marks a capture for
    construct and matches nothing by itself; everything else is literal."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("(.*)")
        elif c == "?":
            out.append("(.)")
        elif c == "(" and re.match(r"\(\$\d+\)", pattern[i:]):
            i = pattern.index(")", i)
        elif c == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            alts = []
            for alt in pattern[i + 1 : end].split(","):
                alt = alt.strip()
                if re.fullmatch(r"\w-\w", alt):
                    alts.append(f"[{re.escape(alt[0])}-{re.escape(alt[2])}]")
                elif alt:
                    alts.append(re.escape(alt))
            out.append("(" + "|".join(alts) + ")")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "^" + "".join(out) + "$"


def capture_regex(pattern: str) -> tuple[re.Pattern[str], dict[str, int]]:
    """The node pattern as a regex, and for each ``($k)`` the group that captures what
    the wildcard (or alternative) just before it matched."""
    regex = node_pattern(pattern)
    captures: dict[str, int] = {}
    group = 0
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c in "*?":
            group += 1
        elif c == "[" and "]" in pattern[i:]:
            group += 1
            i = pattern.index("]", i)
        elif c == "(":
            m = re.match(r"\(\$(\d+)\)", pattern[i:])
            if m:
                captures[m.group(1)] = group
                i += len(m.group(0)) - 1
        i += 1
    return re.compile(regex), captures


def matching(pattern: str, names: Iterable[str]) -> list[str]:
    """The names (in their order) that ``pattern`` matches whole."""
    regex = re.compile(node_pattern(pattern))
    return [n for n in names if regex.match(n)]


__all__ = ["capture_regex", "matching", "node_pattern"]
