"""Writes kernel/src/widget_defaults.json: the default state ipywidgets gives each widget
model the kernel uses (its `get_state()`, binary values left out as ipywidgets leaves
them out of a comm's state), keyed by model name. The kernel starts every model from
these; tests/kernel/test_widgets.py checks them against the installed ipywidgets.

    python python/widget_defaults.py > kernel/src/widget_defaults.json
"""

import json

import ipywidgets as w

WIDGETS = [
    w.Layout, w.FloatSlider, w.FloatLogSlider, w.IntSlider, lambda: w.Dropdown(options=["a"]),
    w.Checkbox, w.Button, w.Image, w.HTML, w.Output, w.VBox, w.HBox,
]


def without_binary(state):
    return {k: v for k, v in state.items() if not isinstance(v, (bytes, bytearray, memoryview))}


def defaults():
    models = {}
    for make in WIDGETS:
        widget = make()
        for part in [widget, getattr(widget, "style", None)]:
            if part is None:
                continue
            state = without_binary(part.get_state())
            # References to other models are made per widget by the kernel.
            state.update({k: "" for k in ("layout", "style") if k in state})
            if state["_model_name"] == "DropdownModel":
                state["_options_labels"], state["index"] = [], None
            models[state["_model_name"]] = state
    return models


if __name__ == "__main__":
    print(json.dumps(defaults(), indent=1, sort_keys=True))
