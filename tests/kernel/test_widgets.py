"""Jupyter widgets through jupyter_client: the comms tchlab's kernel opens for `%explore`
against what ipykernel sends for the same ipywidgets controls, updates echoed and
acted on, button clicks, images in binary buffers, comm_info, comm_close, and hostile
comm messages."""

import base64
import json
import pathlib
import subprocess
import sys
import time

from jupyter_client.manager import start_new_kernel

from cells import RESULT, execute, send_comm

TIMEOUT = 60
SETUP = "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 2 --heads 2 --dim 32\n%set batch=16\n%train 20"
VIEW = "application/vnd.jupyter.widget-view+json"
ROOT = pathlib.Path(__file__).resolve().parents[2]

IPYWIDGETS_CODE = """
import ipywidgets as w
box = w.VBox([
    w.FloatLogSlider(value=1e-3, min=-5, max=-1, description='lr'),
    w.FloatSlider(description='wd'), w.IntSlider(description='steps'),
    w.Dropdown(options=['a', 'b'], description='schedule'), w.Checkbox(description='grid'),
    w.HBox([w.Button(description='train')]), w.Image(format='png'), w.HTML(), w.Output(),
])
display(box)
"""


def comm_opens(outputs):
    return {m["content"]["comm_id"]: m for m in outputs if m["msg_type"] == "comm_open"}


def by_model(opens):
    return {m["content"]["data"]["state"]["_model_name"]: m for m in opens.values()}


def control(opens, description):
    return next(cid for cid, m in opens.items() if m["content"]["data"]["state"].get("description") == description)


def updates(outputs, comm_id, method="update"):
    return [m for m in outputs if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id and m["content"]["data"]["method"] == method]


def shown_outputs(outputs, opens):
    """The `outputs` the explorer's Output widget was last given."""
    output_id = next(cid for cid, m in opens.items() if m["content"]["data"]["state"]["_model_name"] == "OutputModel")
    sent = [u["content"]["data"]["state"]["outputs"] for u in updates(outputs, output_id) if "outputs" in u["content"]["data"]["state"]]
    return sent[-1] if sent else None


def test_widget_messages_match_what_ipykernel_sends_for_the_same_controls(kernel):
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=TIMEOUT)
    try:
        reply, theirs = execute(kc, IPYWIDGETS_CODE)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    theirs_by_model = by_model(comm_opens(theirs))

    _, kc = kernel
    execute(kc, SETUP)
    _, train = execute(kc, "%explore train")
    _, attention = execute(kc, '%explore attention "3141="')
    ours = {**comm_opens(train), **comm_opens(attention)}
    compared = set()
    for comm_id, m in ours.items():
        state = m["content"]["data"]["state"]
        name = state["_model_name"]
        reference = theirs_by_model[name]
        assert m["content"]["target_name"] == reference["content"]["target_name"] == "jupyter.widget"
        assert m["metadata"] == reference["metadata"] == {"version": "2.1.0"}, name
        assert set(state) == set(reference["content"]["data"]["state"]), name
        for key in ["_model_module", "_model_module_version", "_view_module", "_view_module_version", "_view_name"]:
            assert state[key] == reference["content"]["data"]["state"][key], (name, key)
        # Every reference to another model names one opened before it.
        for key in ["layout", "style"]:
            if key in state:
                assert state[key].removeprefix("IPY_MODEL_") in ours, (name, key)
        for child in state.get("children", []):
            assert child.removeprefix("IPY_MODEL_") in ours
        compared.add(name)
    assert {"FloatLogSliderModel", "FloatSliderModel", "IntSliderModel", "DropdownModel", "CheckboxModel", "ButtonModel",
            "ImageModel", "HTMLModel", "OutputModel", "VBoxModel", "HBoxModel", "LayoutModel", "SliderStyleModel",
            "ButtonStyleModel"} <= compared

    # The display: the root VBox's view, as ipykernel shows `display(box)`, with the
    # picture beside it for front ends without widgets.
    display = next(m for m in attention if m["msg_type"] == "display_data")["content"]["data"]
    their_display = next(m for m in theirs if m["msg_type"] == "display_data")["content"]["data"]
    assert set(display[VIEW]) == set(their_display[VIEW]) and display[VIEW]["version_major"] == 2
    assert comm_opens(attention)[display[VIEW]["model_id"]]["content"]["data"]["state"]["_model_name"] == "VBoxModel"
    assert base64.b64decode(display["image/png"]).startswith(b"\x89PNG")
    assert "need a front end with Jupyter widgets" in display["text/plain"]
    # The defaults the kernel starts from are the installed ipywidgets' own.
    fresh = subprocess.run([sys.executable, str(ROOT / "python" / "widget_defaults.py")], capture_output=True, text=True, check=True).stdout
    assert json.loads(fresh) == json.loads((ROOT / "kernel" / "src" / "widget_defaults.json").read_text())


def test_an_update_is_echoed_and_changes_what_the_next_command_sees_and_a_click_trains(kernel):
    _, kc = kernel
    execute(kc, SETUP)
    _, outputs = execute(kc, "%explore train")
    opens = comm_opens(outputs)
    lr = control(opens, "learning rate")
    steps = control(opens, "steps per try")

    caused = send_comm(kc, lr, {"method": "update", "state": {"value": 0.01}, "buffer_paths": []})
    echo = updates(caused, lr, "echo_update")
    assert echo and echo[0]["content"]["data"]["state"] == {"value": 0.01}, caused
    assert echo[0]["metadata"] == {"version": "2.1.0"}
    send_comm(kc, steps, {"method": "update", "state": {"value": 12}, "buffer_paths": []})

    caused = send_comm(kc, control(opens, "train"), {"method": "custom", "content": {"event": "click"}})
    said = shown_outputs(caused, opens)
    assert said and "try-1: 12 steps" in said[0]["text"], said
    image = next(cid for cid, m in opens.items() if m["content"]["data"]["state"]["_model_name"] == "ImageModel")
    drawn = [u for u in updates(caused, image) if u["buffers"]]
    assert drawn and drawn[-1]["content"]["data"]["buffer_paths"] == [["value"]]
    assert drawn[-1]["buffers"][0][:4] == b"\x89PNG", "the loss plot as a binary buffer"

    _, outputs = execute(kc, "%runs")
    runs = [m for m in outputs if m["msg_type"] == "execute_result"][-1]["content"]["data"][RESULT]
    tried = next(r for r in runs if r["branch"] == "try-1")
    assert tried["current"] and tried["steps"] == 20 + 12 and "lr=0.01" in tried["changes"]
    _, outputs = execute(kc, "%hparams")
    assert [m for m in outputs if m["msg_type"] == "execute_result"][-1]["content"]["data"][RESULT]["lr"] == 0.01

    # request_state gives the whole state; comm_info lists every open widget.
    caused = send_comm(kc, lr, {"method": "request_state"})
    assert updates(caused, lr)[0]["content"]["data"]["state"]["value"] == 0.01
    info = kc.comm_info(target_name="jupyter.widget", reply=True)["content"]
    assert set(opens) <= set(info["comms"]) and all(c["target_name"] == "jupyter.widget" for c in info["comms"].values())

    # A widget manager reconnecting asks for every state at once on a control comm.
    caused = send_comm(kc, "control-1", {}, msg_type="comm_open", target_name="jupyter.widget.control")
    assert not [m for m in caused if m["msg_type"] == "comm_close"], "the control comm stays open"
    caused = send_comm(kc, "control-1", {"method": "request_states"})
    states = [m for m in caused if m["msg_type"] == "comm_msg" and m["content"]["data"]["method"] == "update_states"][0]
    assert set(opens) <= set(states["content"]["data"]["states"])
    assert states["content"]["data"]["states"][lr]["state"]["value"] == 0.01
    assert states["content"]["data"]["states"][lr]["model_name"] == "FloatLogSliderModel"
    assert [image, "state", "value"] in states["content"]["data"]["buffer_paths"] and states["buffers"][0][:4] == b"\x89PNG"
    send_comm(kc, "control-1", {}, msg_type="comm_close")

    # Closing the panel's root closes its models.
    root = next(cid for cid, m in opens.items() if m["content"]["data"]["state"]["_model_name"] == "VBoxModel")
    caused = send_comm(kc, root, {}, msg_type="comm_close")
    closed = {m["content"]["comm_id"] for m in caused if m["msg_type"] == "comm_close"}
    assert closed == set(opens) - {root}
    assert not set(opens) & set(kc.comm_info(target_name="jupyter.widget", reply=True)["content"]["comms"])


def test_moving_the_layer_slider_redraws_the_attention_image(kernel):
    _, kc = kernel
    execute(kc, SETUP)
    _, outputs = execute(kc, '%explore attention "3141="')
    opens = comm_opens(outputs)
    image = next(cid for cid, m in opens.items() if m["content"]["data"]["state"]["_model_name"] == "ImageModel")
    first = [u for u in updates(outputs, image) if u["buffers"]][-1]["buffers"][0]
    caused = send_comm(kc, control(opens, "layer"), {"method": "update", "state": {"value": 1}, "buffer_paths": []})
    redrawn = [u for u in updates(caused, image) if u["buffers"]]
    assert redrawn and redrawn[-1]["buffers"][0] != first
    display = [m for m in caused if m["msg_type"] == "update_display_data"]
    assert display and "layer 1" in display[-1]["content"]["data"]["text/plain"], "a saved notebook keeps the last picture"


def test_bad_values_and_hostile_comm_messages_change_nothing_and_say_why(kernel):
    _, kc = kernel
    execute(kc, SETUP)
    _, outputs = execute(kc, '%explore generate "3141="')
    opens = comm_opens(outputs)
    temperature = control(opens, "temperature")

    # Out of range: the session refuses it in the explorer's output; the slider goes back.
    caused = send_comm(kc, temperature, {"method": "update", "state": {"value": 7.5}, "buffer_paths": []})
    said = shown_outputs(caused, opens)
    assert said and said[-1]["output_type"] == "error" and "temperature" in said[-1]["evalue"] and "outside" in said[-1]["evalue"]
    assert updates(caused, temperature)[-1]["content"]["data"]["state"]["value"] == 0.8
    # Of the wrong type: refused by the kernel, the slider put back.
    caused = send_comm(kc, temperature, {"method": "update", "state": {"value": "hot"}, "buffer_paths": []})
    assert "cannot take" in shown_outputs(caused, opens)[-1]["evalue"]
    assert updates(caused, temperature)[-1]["content"]["data"]["state"]["value"] == 0.8

    for data in [None, [], "x", {"method": 5}, {"method": "update"}, {"method": "update", "state": []},
                 {"method": "update", "state": {"nonsense": 1}}, {"method": "custom", "content": {"event": "click"}},
                 {"method": "custom", "content": None}, {"method": "update", "state": {"value": 1e308 * 10}}]:
        send_comm(kc, temperature, data)
    for comm_id in ["", "no-such-comm", None, 5]:
        send_comm(kc, comm_id, {"method": "update", "state": {"value": 1}})
    # A comm the front end opens has no target here: closed, as ipykernel closes it.
    caused = send_comm(kc, "client-side", {}, msg_type="comm_open", target_name="some.target")
    assert [m["content"]["comm_id"] for m in caused if m["msg_type"] == "comm_close"] == ["client-side"]

    _, outputs = execute(kc, "%explore generate \"3141=\"")
    text = [m for m in outputs if m["msg_type"] == "display_data"][-1]["content"]["data"]["text/plain"]
    reply, _ = execute(kc, "%echo still here")
    assert reply["content"]["status"] == "ok"
    assert text.startswith('%explore generate "3141="'), "the same explorer again, at the same values"


def test_an_interrupt_stops_a_try_started_by_a_click(kernel):
    km, kc = kernel
    execute(kc, SETUP)
    _, outputs = execute(kc, "%explore train")
    opens = comm_opens(outputs)
    send_comm(kc, control(opens, "steps per try"), {"method": "update", "state": {"value": 2000}, "buffer_paths": []})
    msg = kc.session.msg("comm_msg", {"comm_id": control(opens, "train"), "data": {"method": "custom", "content": {"event": "click"}}})
    kc.shell_channel.send(msg)
    time.sleep(1.5)
    asked = time.time()
    km.interrupt_kernel()
    caused = []
    while True:
        m = kc.get_iopub_msg(timeout=TIMEOUT)
        if m["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
            caused.append(m)
    assert time.time() - asked < 2.0
    said = shown_outputs(caused, opens)
    assert said[-1]["ename"] == "KeyboardInterrupt" and "keeps them" in said[-1]["evalue"]
    reply, outputs = execute(kc, "%status")
    assert reply["content"]["status"] == "ok"
    status = [m for m in outputs if m["msg_type"] == "execute_result"][-1]["content"]["data"][RESULT]
    assert status["branch"] == "try-1" and 20 < status["step"] < 2020
