"""A strict parser of Prometheus' text exposition format (0.0.4), for the tests of vmkit's metrics."""

from __future__ import annotations

import math
import re

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
Series = tuple[tuple[str, str], ...]


def _labels(text: str, line: str) -> Series:
    """`a="x",b="y\\"z"` -> (("a", "x"), ("b", 'y"z')); anything else is an AssertionError."""
    labels: list[tuple[str, str]] = []
    at = 0
    while at < len(text):
        name = LABEL_NAME.match(text, at)
        assert name and text[name.end():name.end() + 2] == '="', f"bad label at {at}: {line!r}"
        at = name.end() + 2
        value = []
        while True:
            assert at < len(text), f"unterminated label value: {line!r}"
            char = text[at]
            if char == "\\":
                escaped = text[at + 1:at + 2]
                assert escaped in ("\\", '"', "n"), f"bad escape \\{escaped}: {line!r}"
                value.append("\n" if escaped == "n" else escaped)
                at += 2
            elif char == '"':
                at += 1
                break
            else:
                assert char != "\n", line
                value.append(char)
                at += 1
        labels.append((name.group(), "".join(value)))
        if at < len(text):
            assert text[at] == ",", f"expected ',' at {at}: {line!r}"
            at += 1
            assert at < len(text), f"a trailing comma: {line!r}"
    names = [name for name, _ in labels]
    assert len(names) == len(set(names)), f"a label given twice: {line!r}"
    return tuple(labels)


def parse_exposition(text: str) -> dict[str, dict[str, object]]:
    """Every family: {"type", "help", "samples": {labels: value}}, checking that each family has
    one HELP then one TYPE before its samples, its samples together and each series once, names
    start with vmkit_, counters end in _total and are not negative, and values are numbers."""
    assert text.endswith("\n") and "\n\n" not in text, "lines end in \\n, none empty"
    families: dict[str, dict[str, object]] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert METRIC_NAME.fullmatch(name) and name not in families, f"{name}: HELP again, or a bad name"
            assert help_text and "\\" not in help_text.replace("\\\\", "").replace("\\n", ""), line
            families[name] = {"help": help_text, "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and families[name]["type"] is None, f"TYPE of {name} out of place"
            assert kind in ("counter", "gauge"), line
            families[name]["type"] = kind
        else:
            assert not line.startswith("#"), f"an unknown comment: {line!r}"
            match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
            assert match, f"not a sample: {line!r}"
            name, labels, value = match[1], _labels(match[3] or "", line), match[4]
            assert name == current and families[name]["type"], f"{name}: a sample outside its family"
            assert re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|NaN|[-+]Inf", value), line
            number = float(value)
            samples = families[name]["samples"]
            assert labels not in samples, f"a series given twice: {line!r}"
            samples[labels] = number
    for name, family in families.items():
        assert name.startswith("vmkit_"), name
        if family["type"] == "counter":
            assert name.endswith("_total"), name
            assert all(value >= 0 and math.isfinite(value) for value in family["samples"].values()), name
    return families


def value(families: dict, name: str, **labels: str) -> float:
    return families[name]["samples"][tuple(labels.items())]
