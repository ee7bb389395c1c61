"""Named sweeps as data (suites/*.toml) and the one place flag text becomes a SweepSpec.

Suite files use the CLI's flag names and syntax (`seqlen = "8k..64k"`), so a suite is exactly a saved
command line; adding a suite is adding one file. Precedence: SweepSpec defaults < suite < flags.
"""
from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import replace
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Callable, Mapping

from nsa_bench.doclens import parse_doc_lens_list
from nsa_bench.parse import parse_head_dims, parse_names, parse_sizes
from nsa_bench.spec import DTYPES, MODES, SweepSpec

SUITES_PACKAGE = "nsa_bench.suites_data"  # where a wheel puts the repo's suites/ (package data)


class OptionError(ValueError):
    """A flag (or suite key) with a bad value; `flag` names it as the user wrote it."""

    def __init__(self, flag: str, value: object, reason: str) -> None:
        super().__init__(f"invalid value for --{flag}: {value!r}: {reason}")
        self.flag = flag


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
    "warmup": ("warmup", lambda text: int(text)),
    "seed": ("seed", lambda text: int(text)),
    "gpu": ("gpu", lambda text: text.strip()),
    "check-seqlen": ("check_seqlen", _one_int),
}


def suites_dir() -> Traversable:
    """The named suites: a wheel's package data, else the checkout's `suites/` folder (an editable
    install cannot map a subpackage to a folder outside its parent, so it has no package data)."""
    try:
        return importlib.resources.files(SUITES_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "suites"


def suite_names() -> tuple[str, ...]:
    return tuple(sorted(p.name[: -len(".toml")] for p in suites_dir().iterdir() if p.name.endswith(".toml")))


def load_suite(name: str) -> dict[str, object]:
    """Read suites/NAME.toml (or a path to a .toml file) as flag -> value."""
    path: Path | Traversable = Path(name)
    if Path(name).suffix != ".toml":
        path = suites_dir().joinpath(f"{name}.toml")
    if not path.is_file():
        raise OptionError("suite", name, f"no such suite (choose from {', '.join(suite_names())})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise OptionError("suite", name, f"{path} is not valid TOML ({exc})") from exc
    data.pop("description", None)
    unknown = [key for key in data if key not in OPTIONS]
    if unknown:
        raise OptionError("suite", name, f"unknown keys {', '.join(unknown)}")
    return data


def build_spec(suite: str | None, flags: Mapping[str, object | None], base: SweepSpec | None = None) -> SweepSpec:
    """SweepSpec from defaults, then the suite's values, then the flags that were given (not None)."""
    values: dict[str, object] = {}
    layers = [load_suite(suite)] if suite else []
    layers.append({k: v for k, v in flags.items() if v is not None})
    heads_from = ""  # "kv-heads" or "q-heads": whichever a later layer set wins over an earlier one's other
    for layer in layers:
        if "q-heads" in layer and "kv-heads" in layer:
            raise OptionError("q-heads", layer["q-heads"], "--q-heads fixes Hq and derives Hkv = Hq / G: leave --kv-heads out")
        for flag, raw in layer.items():
            field, parse = OPTIONS[flag]
            try:
                values[field] = raw if isinstance(raw, bool) else parse(str(raw))
            except ValueError as exc:
                raise OptionError(flag, raw, str(exc)) from None
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
        raise OptionError(flag, values.get(OPTIONS.get(flag, ("", None))[0], ""), str(exc)) from None
