"""papermill parameters for tchlab notebooks.

`papermill nb.ipynb out.ipynb -p steps 200 -p lr 3e-3` injects a cell of `%params`
lines, which the tchlab kernel reads: hyperparameters among them are set as `%set`
sets them, and `$steps` in later commands stands for the value.

papermill finds translators in a table of its own and has no entry point for them;
it does load engines from entry points as it starts, so this package registers an
engine — papermill's own nbclient engine under the name `tchlab` — and, on import,
its translator for the `tchlab` kernel (only that kernel: evcxr's is Rust too).
"""

import re

from papermill.engines import NBClientEngine
from papermill.translators import Translator, papermill_translators

KERNEL_NAME = "tchlab"

_PARAMS_LINE = re.compile(r"^\s*%params\s+(.*)$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TchlabTranslator(Translator):
    """Parameters as `%params name=value` lines, one per parameter."""

    @classmethod
    def translate_escaped_str(cls, str_val):
        text = str(str_val)
        if "\n" in text or "\r" in text:
            raise ValueError(f"tchlab parameters are one line each; {text!r} has a line break")
        # The command language's words: double quotes, with \ escaping \ and ".
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    @classmethod
    def translate_none(cls, val):
        return '""'

    @classmethod
    def translate_bool(cls, val):
        return "true" if val else "false"

    @classmethod
    def translate_float(cls, val):
        return repr(val)

    @classmethod
    def translate_list(cls, val):
        # %sweep's list syntax, key=[a,b,c]; one word, so no spaces.
        return "[" + ",".join(cls.translate(v).strip('"') for v in val) + "]"

    @classmethod
    def translate_dict(cls, val):
        raise ValueError("tchlab parameters are single values or lists, not mappings")

    @classmethod
    def comment(cls, cmt_str):
        return f"# {cmt_str}".strip()

    @classmethod
    def assign(cls, name, str_val):
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a tchlab parameter name: letters, digits and _, not starting with a digit")
        return f"%params {name}={str_val}"

    @classmethod
    def inspect(cls, parameters_cell):
        """The parameters a cell tagged `parameters` declares with `%params`, for
        `papermill --help-notebook`."""
        from papermill.models import Parameter

        found = []
        for line in parameters_cell.source.splitlines():
            match = _PARAMS_LINE.match(line)
            if not match:
                continue
            for pair in match.group(1).split():
                name, _, default = pair.partition("=")
                if _NAME.match(name):
                    found.append(Parameter(name=name, inferred_type_name="None", default=default, help=""))
        return found


class TchlabEngine(NBClientEngine):
    """papermill's nbclient engine; registered so that this module is imported."""


papermill_translators.register(KERNEL_NAME, TchlabTranslator)
