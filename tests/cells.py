"""Running a cell through a jupyter_client kernel client, for the tests of the kernel
and of Rust cells."""

import time

import zmq

# Where every result's data is (beside text/plain, and text/html for tables): a vendor
# type, so that notebook front ends show the text rather than a JSON tree.
RESULT = "application/vnd.tchlab.result+json"


def execute(kc, code, timeout=60, **kwargs):
    """Runs `code`; returns the execute_reply and the iopub messages it caused, each
    with the time it arrived (`arrived`)."""
    msg_id = kc.execute(code, **kwargs)
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        msg["arrived"] = time.time()
        outputs.append(msg)
    reply = kc.get_shell_msg(timeout=timeout)
    assert reply["parent_header"]["msg_id"] == msg_id
    return reply, outputs


def shell_socket(km):
    """A shell connection of our own, to send raw frames and read every reply."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(f"{km.transport}://{km.ip}:{km.shell_port}")
    return socket


def send_comm(kc, comm_id, data, msg_type="comm_msg", timeout=60, **content):
    """Sends a comm message (with more `content`, a `comm_open`'s `target_name`) on shell
    as a widget front end does; returns the IOPub messages it caused, up to its idle status."""
    msg = kc.session.msg(msg_type, {"comm_id": comm_id, "data": data, **content})
    kc.shell_channel.send(msg)
    caused = []
    while True:
        m = kc.get_iopub_msg(timeout=timeout)
        if m["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
            continue
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return caused
        caused.append(m)
