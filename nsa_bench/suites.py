"""Named sweeps as data (suites/*.toml) and the one place flag text becomes a SweepSpec.

Suite files use the CLI's flag names and syntax (`seqlen = "8k..64k"`), so a suite is exactly a saved
command line; adding a suite is adding one file. Precedence: SweepSpec defaults < suite < flags.
"""
from __future__ import annotations

import importlib.resources
import re
import tomllib
from dataclasses import replace
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Callable, Mapping

from nsa_bench import limits
from nsa_bench.doclens import parse_doc_lens_list
from nsa_bench.messages import show
from nsa_bench.parse import parse_head_dims, parse_int, parse_name, parse_names, parse_sizes
from nsa_bench.spec import DTYPES, MODES, SweepSpec

SUITES_PACKAGE = "nsa_bench.suites_data"  # where a wheel puts the repo's suites/ (package data)


class OptionError(ValueError):
    """A flag (or suite key) with a bad value; `flag` names it as the user wrote it, `source` the suite
    file it came from (None: the command line)."""

    def __init__(self, flag: str, value: object, reason: str, source: str | None = None) -> None:
        where = f" in suite {source}" if source else ""
        name = flag if source else f"--{flag}"
        shown = ("true" if value else "false") if isinstance(value, bool) else show(value)
        super().__init__(f"invalid value for {name}{where}: {shown}: {reason}")
        self.flag = flag
        self.source = source


class InvalidConfiguration(OptionError):
    """No point of the sweep is a valid NSA configuration. It blames, of the fields the reason names, those
    set on the command line, else those the suite sets: `--block-cmp 24` is the culprit, not the default
    stride it clashes with."""

    FIELDS = ("block_cmp", "stride_cmp", "block_slc", "n_slc", "window")

    def __init__(self, reason: str, options: Mapping[str, object | None], suite: str | None = None) -> None:
        named = [f.replace("_", "-") for f in self.FIELDS if re.search(rf"\b{f}\b", reason)] or ["block-cmp"]
        given = [f for f in named if options.get(f) is not None]
        in_suite = [f for f in named if suite and f in load_suite(suite)] if not given else []
        if given:
            what = " and ".join(f"--{f} {show(options[f], 40)}" for f in given)
        elif in_suite:
            what = f"{' and '.join(in_suite)} in suite {suite_path(suite)}"
        else:
            what = " and ".join(f"--{f}" for f in named)
        ValueError.__init__(self, f"invalid value for {what}: no valid NSA configuration ({reason})")
        self.flag = (given or in_suite or named)[0]
        self.source = suite


def _ints(text: str) -> tuple[int, ...]:
    return parse_sizes(text)


def _one_int(text: str) -> int:
    values = parse_sizes(text)
    if len(values) != 1:
        raise ValueError("takes a single number")
    return values[0]


def _dtypes(text: str) -> tuple[str, ...]:
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}
    return parse_names(",".join(aliases.get(n.strip(), n.strip()) for n in text.split(",")), DTYPES)


# flag name -> (SweepSpec field, parser of the flag's text)
OPTIONS: Mapping[str, tuple[str, Callable[[str], object]]] = {
    "seqlen": ("seqlens", parse_sizes),
    "batch": ("batches", _ints),
    "kv-heads": ("kv_heads", _ints),
    "q-heads": ("q_heads", _ints),  # fixed query heads: Hkv = Hq // G (excludes kv-heads; see build_spec)
    "group-size": ("group_sizes", _ints),
    "head-dim": ("head_dims", parse_head_dims),
    "block-cmp": ("block_cmp", _ints),
    "stride-cmp": ("stride_cmp", _ints),
    "block-slc": ("block_slc", _ints),
    "n-slc": ("n_slc", _ints),
    "window": ("window", _ints),
    "mode": ("modes", lambda text: parse_names(text, MODES)),
    "dtype": ("dtypes", _dtypes),
    "backend": ("backends", parse_names),
    "baseline": ("baseline", parse_names),  # a list: the first fills the CSV's speedup column (see build_spec)
    "d-model": ("d_models", _ints),
    "doc-lens": ("doc_lens", parse_doc_lens_list),
    "reps": ("reps", _one_int),
    "warmup": ("warmup", parse_int),
    "seed": ("seed", parse_int),
    "gpu": ("gpu", parse_name),
    "check-seqlen": ("check_seqlen", _one_int),
}
# keys whose value may be a TOML integer (or, for list axes, an array of integers)
_NUMBER_KEYS = frozenset({"seqlen", "batch", "kv-heads", "q-heads", "group-size", "head-dim", "block-cmp",
                          "stride-cmp", "block-slc", "n-slc", "window", "d-model", "reps", "warmup", "seed",
                          "check-seqlen"})
_LIST_KEYS = frozenset({"seqlen", "batch", "kv-heads", "q-heads", "group-size", "head-dim", "block-cmp", "stride-cmp",
                        "block-slc", "n-slc", "window", "d-model", "doc-lens", "mode", "dtype", "backend", "baseline"})
_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", dict: "a table",
               list: "an array"}


def suites_dir() -> Traversable:
    """The named suites: a wheel's package data, else the checkout's `suites/` folder (an editable
    install cannot map a subpackage to a folder outside its parent, so it has no package data)."""
    try:
        return importlib.resources.files(SUITES_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "suites"


def suite_names() -> tuple[str, ...]:
    return tuple(sorted(p.name[: -len(".toml")] for p in suites_dir().iterdir() if p.name.endswith(".toml")))


def _toml_type(value: object) -> str:
    return next((name for kind, name in _TOML_TYPES.items() if isinstance(value, kind)),
                f"a {type(value).__name__.replace('datetime', 'date and time')}")


def suite_text(key: str, value: object) -> str:
    """A suite value as the flag text it stands for; ValueError for a TOML type the key cannot take.

    Strings always; integers where the key takes numbers (`reps = 30`); arrays of those for the axes
    (`seqlen = ["1k", "2k"]`). `mode = true` or `seqlen = 1.5` are refused, never coerced.
    """
    def scalar(item: object) -> str:
        if isinstance(item, str):
            return item
        if isinstance(item, int) and not isinstance(item, bool) and key in _NUMBER_KEYS:
            return str(item)
        wanted = "a string or an integer" if key in _NUMBER_KEYS else "a string"
        raise ValueError(f"must be {wanted}{' (or an array of them)' if key in _LIST_KEYS else ''}, "
                         f"not {_toml_type(item)}")

    if isinstance(value, list) and key in _LIST_KEYS:
        if not value:
            raise ValueError("is an empty array")
        return ",".join(scalar(item) for item in value)
    return scalar(value)


def suite_path(name: str) -> Path | Traversable:
    """The file of a named suite, or the path itself when `name` ends in .toml."""
    try:
        path: Path | Traversable = Path(name)
        if Path(name).suffix != ".toml":
            path = suites_dir().joinpath(f"{name}.toml")
        found = path.is_file()
    except (OSError, ValueError):  # a NUL byte, a name over the file-system limit
        found = False
    if not found:
        try:
            there = Path(name).exists()
        except (OSError, ValueError):
            there = False
        what = ("is not a suite file (a suite is a name or a .toml file)" if there and Path(name).suffix != ".toml"
                else "is not a regular file" if there else "no such suite")
        raise OptionError("suite", name, f"{what} (choose from {', '.join(suite_names())} or give a .toml path)")
    return path


def load_suite(name: str) -> dict[str, object]:
    """Read suites/NAME.toml (or a path to a .toml file) as flag -> value."""
    path = suite_path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise OptionError("suite", name, f"{path} is not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise OptionError("suite", name, f"{path} is not a text file (not UTF-8)") from None
    except OSError as exc:
        raise OptionError("suite", name, f"cannot read {path}: {exc.strerror or exc}") from None
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise OptionError("description", description, f"must be a string, not {_toml_type(description)}", str(path))
    unknown = [key for key in data if key not in OPTIONS]
    if unknown:
        listed = ", ".join(show(key, 30) for key in unknown[:5])
        raise OptionError("suite", name, f"{path}: unknown keys {listed} (known: {', '.join(OPTIONS)})")
    return data


def build_spec(suite: str | None, flags: Mapping[str, object | None], base: SweepSpec | None = None) -> SweepSpec:
    """SweepSpec from defaults, then the suite's values, then the flags that were given (not None)."""
    values: dict[str, object] = {}
    if suite is not None and not suite.strip():
        raise OptionError("suite", suite, "must not be empty")
    layers: list[tuple[str | None, Mapping[str, object]]] = [(str(suite_path(suite)), load_suite(suite))] if suite else []
    layers.append((None, {k: v for k, v in flags.items() if v is not None}))
    heads_from = ""  # "kv-heads" or "q-heads": whichever a later layer set wins over an earlier one's other
    given: dict[str, object] = {}  # flag -> the value as written (what an error quotes)
    came_from: dict[str, str | None] = {}  # flag -> the suite file that set it (None: the command line)
    for source, layer in layers:
        if "q-heads" in layer and "kv-heads" in layer:
            raise OptionError("q-heads", layer["q-heads"], "--q-heads fixes Hq and derives Hkv = Hq / G: leave --kv-heads out",
                              source)
        for flag, raw in layer.items():
            field, parse = OPTIONS[flag]
            try:
                parsed = parse(raw if isinstance(raw, str) and source is None else suite_text(flag, raw))
            except ValueError as exc:
                raise OptionError(flag, raw, str(exc), source) from None
            why = limits.out_of_bounds(field, parsed)
            if why:
                raise OptionError(flag, raw, why, source)
            values[field] = parsed
            given[flag] = raw
            came_from[flag] = source
            heads_from = flag if flag in ("kv-heads", "q-heads") else heads_from
    if heads_from == "kv-heads":
        values["q_heads"] = ()
    if isinstance(values.get("baseline"), tuple):  # --baseline fa2,cudnn: the first, then the others
        first, *others = values["baseline"]
        values["baseline"], values["more_baselines"] = first, tuple(others)
    spec = base or SweepSpec()
    try:
        return replace(spec, **values)
    except ValueError as exc:
        flag = next((f for f, (field, _) in OPTIONS.items() if str(exc).startswith(field)), "sweep")
        raise OptionError(flag, given.get(flag, values.get(OPTIONS.get(flag, ("", None))[0], "")), str(exc),
                          came_from.get(flag)) from None
