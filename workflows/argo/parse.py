"""How Argo's Go code reads the scalars of a Workflow, ported so `kubellm lint` can judge them offline.

Argo decodes a Workflow YAML into Go types before it substitutes any `{{...}}`, with Go parsers
that accept less (or more) than Python's: a Kubernetes quantity, a Go duration, a Go float and
the YAML scalar rules of sigs.k8s.io/yaml (go-yaml v2). Each function names the Go function it
follows; `workflows.argo.rules` uses them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

# k8s.io/apimachinery/pkg/api/resource/quantity.go splitREString, quoted in its error message
QUANTITY_REGEX = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_DECIMAL_SI = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_GO_INT = re.compile(r"[+-]?[0-9]+")


def quantity_error(text: str) -> str | None:
    """Why resource.ParseQuantity rejects text, or None when it parses.

    Ported from k8s.io/apimachinery resource.ParseQuantity and its scanner parseQuantityString
    (sign, digits, optional '.' and digits, suffix letters, optional signed exponent digits),
    then suffixer.interpret (Ki..Ei, n u m "" k M G T P E, e/E followed by a Go int64).
    """
    if text == "":
        return "empty (quantities must match the regular expression '" + QUANTITY_REGEX + "')"
    if text == "0":
        return None
    pos, end = 0, len(text)
    if text[0] in "+-":
        pos = 1
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return None  # a sign and zeros only: Kubernetes reads 0
    start = pos
    while pos < end and text[pos].isdigit() and text[pos].isascii():
        pos += 1
    num = text[start:pos] or "0"
    denom = ""
    if pos < end and text[pos] == ".":
        pos += 1
        dstart = pos
        while pos < end and text[pos].isdigit() and text[pos].isascii():
            pos += 1
        denom = text[dstart:pos]
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos].isdigit() and text[pos].isascii():
        pos += 1
    if pos < end:
        return "quantities must match the regular expression '" + QUANTITY_REGEX + "'"
    suffix = text[suffix_start:]
    if suffix in _DECIMAL_SI:
        base, exponent = 10, _DECIMAL_SI[suffix]
    elif suffix in _BINARY_SI:
        base, exponent = 2, _BINARY_SI[suffix]
    elif len(suffix) > 1 and suffix[0] in "eE" and _GO_INT.fullmatch(suffix[1:]) and -2**63 <= int(suffix[1:]) < 2**63:
        base, exponent = 10, int(suffix[1:])
    else:
        return f"unable to parse quantity's suffix '{suffix}' (use one of Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or e<int>)"
    # The fast path (an int64 mantissa) accepts a value without digits such as '.'; the slow path
    # (inf.Dec.SetString) needs at least one digit.
    if base == 10:
        fast = 18 - (len(num) + len(denom)) >= 0 and exponent - len(denom) >= -9
    else:
        fast = not denom and 15 - len(num) - int(exponent * 3 / 10) - 1 >= 0
    if not fast and not any(c.isdigit() for c in value):
        return "unable to parse numeric part of quantity"
    return None


def json_quantity_error(value) -> str | None:
    """Why Quantity.UnmarshalJSON rejects this decoded YAML value, or None.

    Ported from resource.Quantity.UnmarshalJSON: JSON null is an empty quantity; a number is
    parsed from its JSON text; a string is trimmed of spaces and parsed; anything else fails.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return f"{str(value).lower()} is a boolean, not a quantity"
    if isinstance(value, int):
        return quantity_error(str(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{value} cannot be written as JSON, so it is not a quantity"
        return quantity_error(repr(value).replace("e+", "e"))
    if isinstance(value, str):
        return quantity_error(value.strip())
    return f"a {type(value).__name__} is not a quantity"


_DURATION_UNITS = {"ns", "us", "\u00b5s", "\u03bcs", "ms", "s", "m", "h"}


def go_duration_error(text: str) -> str | None:
    """Why Go's time.ParseDuration rejects text, or None. Grammar: [-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+."""
    s = text
    if s[:1] in ("+", "-"):
        s = s[1:]
    if s == "0":
        return None
    if s == "":
        return f"invalid duration '{text}'"
    while s:
        m = re.match(r"([0-9]*)(\.([0-9]*))?", s)
        pre, post = m.group(1), m.group(3) or ""
        if not pre and not post:
            return f"invalid duration '{text}'"
        s = s[m.end():]
        u = re.match(r"[^.0-9]*", s).group(0)
        if not u:
            return f"missing unit in duration '{text}' (units are ns, us, ms, s, m, h)"
        if u not in _DURATION_UNITS:
            return f"unknown unit '{u}' in duration '{text}' (units are ns, us, ms, s, m, h)"
        s = s[len(u):]
    return None


def argo_duration_error(text: str) -> str | None:
    """Why wfv1.ParseStringToDuration rejects text: a bare integer is seconds, else a Go duration."""
    if re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    return go_duration_error(text)


_GO_FLOAT_DEC = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_GO_FLOAT_HEX = re.compile(r"[+-]?0[xX](_?[0-9a-fA-F])*(\.([0-9a-fA-F]_?)*)?[pP][+-]?[0-9]+")
_GO_FLOAT_SPECIAL = re.compile(r"[+-]?(inf|infinity)|nan", re.IGNORECASE)


def go_float_error(text: str) -> str | None:
    """Why Go's strconv.ParseFloat(text, 64) fails, or None (decimal, hex with p exponent, inf, nan)."""
    if _GO_FLOAT_SPECIAL.fullmatch(text) or _GO_FLOAT_HEX.fullmatch(text):
        return None
    if not _GO_FLOAT_DEC.fullmatch(text):
        return f"'{text}' is not a number"
    if math.isinf(float(text)):
        return f"'{text}' is out of the range of a 64-bit float"
    return None


def go_float_text(value: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64): the shortest digits that round-trip, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# sigs.k8s.io/yaml/goyaml.v2 resolve.go: resolveMap and yamlStyleFloat
_YAML_MAP: dict[str, object] = {}
for _v, _words in ((True, "y Y yes Yes YES true True TRUE on On ON"),
                   (False, "n N no No NO false False FALSE off Off OFF"),
                   (math.nan, ".nan .NaN .NAN"), (math.inf, ".inf .Inf .INF +.inf +.Inf +.INF"),
                   (-math.inf, "-.inf -.Inf -.INF")):
    for _w in _words.split():
        _YAML_MAP[_w] = _v
for _w in ("", "~", "null", "Null", "NULL"):
    _YAML_MAP[_w] = None
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _go_int(plain: str) -> int | None:
    """strconv.ParseInt(plain, 0, 64), then ParseUint: optional sign, 0x / 0o / 0b / leading-0 octal."""
    m = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)", plain)
    if not m:
        return None
    sign, body = m.groups()
    if body[:2].lower() in ("0x", "0o", "0b"):
        value = int(body[2:], {"x": 16, "o": 8, "b": 2}[body[1].lower()])
    else:
        value = int(body, 8 if body.startswith("0") and len(body) > 1 else 10)
    value = -value if sign == "-" else value
    return value if -2**63 <= value < 2**64 else None


def yaml_scalar(text: str):
    """What sigs.k8s.io/yaml (goyaml.v2 `resolve`) makes of a plain (unquoted) scalar.

    Returns the Python value for a bool, null, int or float, else the text itself (a string).
    A timestamp stays a string (go-yaml v2 keeps it as text when decoding into interface{}), and
    no timestamp parses as a number, so it needs no case of its own.
    """
    if text in _YAML_MAP:
        return _YAML_MAP[text]
    if not text or text[0] not in "+-0123456789.":
        return text
    if text[0] == ".":
        return float(text) if _GO_FLOAT_DEC.fullmatch(text) else text
    plain = text.replace("_", "")
    if (i := _go_int(plain)) is not None:
        return i
    if _YAML_FLOAT.fullmatch(plain):
        return float(plain)
    return text


def argo_string(value) -> str | None:
    """The text Argo keeps for a decoded parameter value (wfv1.AnyString.UnmarshalJSON); None = no value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return go_float_text(float(value))  # JSON numbers decode as float64 first
    return str(value)
