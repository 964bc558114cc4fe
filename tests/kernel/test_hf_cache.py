"""`%load org/name` finds a model in the Hugging Face cache, offline, where
`huggingface_hub` and `transformers` find it: `models--org--name/snapshots/REV/` with
`refs/main` naming the revision, files linked to content-addressed blobs, under
`$HF_HUB_CACHE` or `$HF_HOME/hub`.

The cache is laid out here as `hf_hub_download` writes it (no network here to download
with); `huggingface_hub`'s own readers (`try_to_load_from_cache`, `scan_cache_dir`) and
`transformers`' offline `from_pretrained` must agree that it is a valid cache before the
kernel is asked."""

import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir, try_to_load_from_cache
from jupyter_client.manager import start_new_kernel
from transformers import AutoConfig

from cells import RESULT, execute

TIMEOUT = 60
REPO = "tchlab-tests/gpt-a"
COMMIT = "4f0c3d5e6a7b8c9d0e1f2a3b4c5d6e7f80912345"


def lay_out(cache: Path, repo_id: str, source: Path) -> Path:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name != "reference.safetensors":
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def loaded(env, code):
    km, kc = start_new_kernel(kernel_name="tchlab", startup_timeout=TIMEOUT, env=dict(os.environ, **env))
    try:
        reply, outputs = execute(kc, f"%device cpu\n{code}", timeout=TIMEOUT)
        results = [m["content"]["data"][RESULT] for m in outputs if m["msg_type"] == "execute_result"]
        return reply["content"], results[-1] if results else None
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_load_finds_a_model_in_the_hugging_face_cache(tmp_path, variable):
    fixture = Path(os.environ["TCHLAB_FIXTURES"]) / "gpt-a"
    cache = tmp_path / "hub"
    snapshot = lay_out(cache, REPO, fixture)
    assert try_to_load_from_cache(REPO, "config.json", cache_dir=cache) == str(snapshot / "config.json")
    assert [r.repo_id for r in scan_cache_dir(cache).repos] == [REPO]
    assert AutoConfig.from_pretrained(REPO, cache_dir=cache, local_files_only=True).vocab_size == 101

    env = {"HF_HUB_CACHE": str(cache)} if variable == "HF_HUB_CACHE" else {"HF_HOME": str(tmp_path)}
    env["HF_HUB_OFFLINE"] = "1"
    content, result = loaded(env, f"%load {REPO}")
    assert content["status"] == "ok", content
    assert result["path"] == str(snapshot) and result["model_type"] == "gpt2", result
    _, direct = loaded({}, f"%load {fixture}")
    assert result["parameters"] == direct["parameters"]

    content, _ = loaded(env, "%load tchlab-tests/no-such-model")
    assert content["status"] == "error" and content["ename"] == "FileError", content
    assert str(cache) in content["evalue"] and "models--tchlab-tests--no-such-model" in content["evalue"], content["evalue"]


def test_names_cannot_leave_the_cache_and_broken_caches_say_what_is_wrong(tmp_path):
    cache = tmp_path / "hub"
    snapshot = lay_out(cache, REPO, Path(os.environ["TCHLAB_FIXTURES"]) / "gpt-a")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    (cache / "models--tchlab-tests--gpt-a" / "refs" / "main").write_text("../../../etc")
    content, _ = loaded(env, f"%load {REPO}")
    assert content["status"] == "error" and "not a commit hash" in content["evalue"], content
    (cache / "models--tchlab-tests--gpt-a" / "refs" / "main").write_text("0" * 40)
    content, _ = loaded(env, f"%load {REPO}")
    assert content["status"] == "error" and "download the model again" in content["evalue"], content
    (cache / "models--tchlab-tests--gpt-a" / "refs" / "main").unlink()
    content, result = loaded(env, f"%load {REPO}")
    assert content["status"] == "ok" and result["path"] == str(snapshot), "the only snapshot, without refs/main"
    content, _ = loaded(env, "%load tchlab-tests/../gpt-a")
    assert content["status"] == "error" and content["ename"] == "FileError", content
