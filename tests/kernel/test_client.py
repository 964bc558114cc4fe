"""The kernel driven by jupyter_client as a notebook front end drives it: live
training displays, interrupts, stop_on_error, forged / replayed / malformed messages,
restart, heartbeat."""

import os
import time

import zmq
from jupyter_client.session import Session

from cells import RESULT, execute, shell_socket

TIMEOUT = 60
SETUP = "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 1 --heads 2 --dim 32\n%set batch=16"


def result_json(outputs):
    results = [m for m in outputs if m["msg_type"] == "execute_result"]
    return results[-1]["content"]["data"][RESULT]


def test_training_updates_one_live_display(kernel):
    _, kc = kernel
    assert execute(kc, SETUP)[0]["content"]["status"] == "ok"
    started = time.time()
    reply, outputs = execute(kc, "%train 60")
    seconds = time.time() - started
    assert reply["content"]["status"] == "ok"
    displays = [m for m in outputs if m["msg_type"] == "display_data" and m["content"]["transient"].get("display_id")]
    assert len(displays) == 1, "one live display"
    display_id = displays[0]["content"]["transient"]["display_id"]
    updates = [m for m in outputs if m["msg_type"] == "update_display_data"]
    assert updates and all(u["content"]["transient"]["display_id"] == display_id for u in updates)
    assert len(updates) <= 4 * seconds + 2, f"{len(updates)} updates in {seconds:.1f} s: throttled to about 4 a second"
    final = updates[-1]["content"]["data"]
    assert "60/60" in final["text/plain"] and "image/png" in final
    assert result_json(outputs)["step"] == 60


def test_an_interrupt_stops_training_within_a_second_and_keeps_state(kernel):
    km, kc = kernel
    execute(kc, SETUP)
    msg_id = kc.execute("%train 100000000")
    # Wait until training is under way (the live display appears).
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "display_data":
            break
    time.sleep(0.5)
    asked = time.time()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=TIMEOUT)
    took = time.time() - asked
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert "interrupted after step" in reply["content"]["evalue"]
    assert took < 1.0, f"the interrupt took {took:.2f} s"
    _, outputs = execute(kc, "%status")
    step = result_json(outputs)["step"]
    _, outputs = execute(kc, "%history --last 100000000")
    assert len(result_json(outputs)) == step > 0, "model, optimizer and history agree"
    reply, _ = execute(kc, "%step")
    assert reply["content"]["status"] == "ok", "the next cell trains on"


def test_stop_on_error_aborts_the_executes_queued_behind_a_failure(kernel):
    _, kc = kernel
    ids = [kc.execute("%bogus"), kc.execute("%echo queued one"), kc.execute("%echo queued two")]
    replies = {}
    while len(replies) < len(ids):
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        replies[reply["parent_header"]["msg_id"]] = reply["content"]["status"]
    assert [replies[i] for i in ids] == ["error", "aborted", "aborted"]
    assert execute(kc, "%echo later")[0]["content"]["status"] == "ok"
    ids = [kc.execute("%bogus", stop_on_error=False), kc.execute("%echo still runs")]
    statuses = {}
    while len(statuses) < 2:
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        statuses[reply["parent_header"]["msg_id"]] = reply["content"]["status"]
    assert [statuses[i] for i in ids] == ["error", "ok"]


def replies_within(socket, session, seconds):
    """Every message that arrives on `socket` within `seconds`."""
    got = []
    deadline = time.time() + seconds
    while (left := deadline - time.time()) > 0:
        if socket.poll(int(left * 1000)):
            _, msg = session.feed_identities(socket.recv_multipart())
            got.append(session.deserialize(msg))
    return got


def test_forged_replayed_and_malformed_messages_are_dropped_and_the_next_good_one_answered(kernel):
    km, kc = kernel
    session = kc.session
    socket = shell_socket(km)

    def good_request():
        msg = session.msg("kernel_info_request")
        socket.send_multipart(session.serialize(msg))
        return msg["header"]["msg_id"]

    forger = Session(key=b"not the key", session=session.session)
    bad = [
        forger.serialize(forger.msg("kernel_info_request")),  # wrong signature
        [b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"{}"],  # no signature
        [b"<IDS|MSG>", b"deadbeef", b"{not json", b"{}", b"{}", b"{}"],  # bad signature, broken header
        [b"no delimiter at all"],
        [b"<IDS|MSG>"],  # nothing after the delimiter
    ]
    for frames in bad:
        socket.send_multipart(frames)
    answered = good_request()
    got = replies_within(socket, session, 3.0)
    assert [m["parent_header"]["msg_id"] for m in got] == [answered], "only the good request is answered"

    msg = session.msg("kernel_info_request")
    frames = session.serialize(msg)
    socket.send_multipart(frames)
    socket.send_multipart(frames)  # the same signature again: a replay
    answered = good_request()
    got = replies_within(socket, session, 3.0)
    assert [m["parent_header"]["msg_id"] for m in got] == [msg["header"]["msg_id"], answered], "the replay is dropped"
    socket.close()


def test_restart_gives_a_fresh_session(kernel):
    km, kc = kernel
    execute(kc, SETUP)
    execute(kc, "%step 2")
    km.restart_kernel(now=False)
    kc.wait_for_ready(timeout=TIMEOUT)
    _, outputs = execute(kc, "%status")
    assert result_json(outputs)["step"] == 0 and result_json(outputs)["model"] is None


def test_the_heartbeat_echoes(kernel):
    km, kc = kernel
    ctx = zmq.Context.instance()
    hb = ctx.socket(zmq.REQ)
    hb.linger = 0
    hb.connect(f"{km.transport}://{km.ip}:{km.hb_port}")
    hb.send(b"tchlab ping 42")
    assert hb.poll(5000), "the heartbeat answers"
    assert hb.recv() == b"tchlab ping 42"
    hb.close()


def test_a_connection_file_with_another_signature_scheme_is_refused(tmp_path):
    import json
    import subprocess

    from conftest import KERNEL

    connection = tmp_path / "kernel.json"
    connection.write_text(json.dumps({
        "ip": "127.0.0.1", "transport": "tcp", "shell_port": 0, "iopub_port": 0, "stdin_port": 0, "control_port": 0, "hb_port": 0,
        "key": "secret", "signature_scheme": "hmac-md5",
    }))
    result = subprocess.run([str(KERNEL), "run", "--connection-file", str(connection)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "hmac-md5" in result.stderr and "hmac-sha256" in result.stderr
    assert "secret" not in result.stderr, "the key is never logged"


def gpu_present():
    return any(name[len("nvidia"):].isdigit() for name in os.listdir("/dev") if name.startswith("nvidia"))


def test_libtorch_cuda_is_loaded_only_where_there_is_a_gpu(kernel):
    km, kc = kernel
    execute(kc, "%echo ready")
    with open(f"/proc/{km.provisioner.pid}/maps") as maps:
        libraries = {line.split("/")[-1].strip() for line in maps if ".so" in line}
    assert "libtorch_cpu.so" in libraries
    # Opening CUDA costs every start a fifth of a second; only a GPU is worth it.
    assert ("libtorch_cuda.so" in libraries) == gpu_present(), sorted(libraries)


def test_a_subscriber_is_welcomed_on_iopub_as_ipykernel_does(kernel):
    km, kc = kernel
    # JEP 65: XPUB greets each subscription, so a client knows IOPub reaches it.
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(f"{km.transport}://{km.ip}:{km.iopub_port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        assert sub.poll(10_000), "no welcome within 10 s"
        frames = sub.recv_multipart()
        session = Session(key=km.session.key)
        _, frames = session.feed_identities(frames)
        welcome = session.deserialize(frames)
        assert welcome["msg_type"] == "iopub_welcome"
        assert welcome["content"] == {"subscription": ""}
        assert welcome["parent_header"] == {}
    finally:
        sub.close(linger=0)
