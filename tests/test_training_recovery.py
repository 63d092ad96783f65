"""kill -9 of the gateway in the middle of a run: its workers go too, and after a restart the saved
checkpoints are intact and the run continues from its last saved state (with the official tinker SDK).

Checkpoints live on the storage layer: the test runs once with local files and once with an S3 bucket
(moto's server, a real process), and wipes the gateway's local checkpoint cache while it is down, so the
restarted gateway must load the state from the store itself."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from _training import make_key, start_training_gateway, tiny_model, training_config  # noqa: F401
from hybridgate.testing.procs import write_config
from test_storage import make_bucket

tinker = pytest.importorskip("tinker")
from tinker import types  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _pending(work: Path) -> bool:
    db = sqlite3.connect(work / "hybridgate.db")
    try:
        q = "SELECT count(*) FROM training_futures WHERE status = 'pending' AND type = 'forward_backward'"
        return bool(db.execute(q).fetchone()[0])
    finally:
        db.close()


def _stored_keys(cfg: dict[str, Any], work: Path) -> list[str]:
    """The keys of the objects in the gateway's store (the local files folder, or the bucket)."""
    st = cfg.get("storage")
    if st is None:
        root = work / "files" / "objects"
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=st["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    bucket = st["url"].removeprefix("s3://").split("/")[0]
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_killed_gateway_leaves_intact_checkpoints_and_the_run_continues(
    where: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tiny_model: Path,  # noqa: F811
) -> None:
    cfg = training_config(tmp_path, tiny_model)
    if where == "s3":
        endpoint = request.getfixturevalue("s3_server")
        make_bucket(endpoint, "ckpts-recovery")
        cfg["storage"] = {
            "url": "s3://ckpts-recovery/gw",
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "access_key_id": "test",
            "secret_access_key": "test",
        }
    write_config(cfg, tmp_path)
    key = make_key(tmp_path, "researcher")
    proc = start_training_gateway(tmp_path, cfg)
    try:
        sc = tinker.ServiceClient(base_url=proc.url + "/tinker", api_key=key)
        tc = sc.create_lora_training_client(base_model="tiny", rank=4, seed=0).result()
        tok = tc.get_tokenizer()
        ids = tok.encode("The quick brown fox jumps over the lazy dog.")
        batch = [
            types.Datum(
                model_input=types.ModelInput.from_ints(ids[:-1]),
                loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)},
            )
        ]
        for _ in range(2):
            tc.forward_backward(batch, "cross_entropy").result()
            tc.optim_step(types.AdamParams(learning_rate=5e-3)).result()
        state = tc.save_state("before-crash").result().path
        saved_loss = tc.forward(batch, "cross_entropy").result().metrics["loss:sum"]
        # Work in flight at the crash: a step that will never report back
        tc.forward_backward(batch * 1000, "cross_entropy")
        deadline = time.monotonic() + 30
        while not _pending(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pending(tmp_path), "the big step never reached the gateway"
        workers = _children(proc.popen.pid)
        assert workers, "the gateway should run its model in a worker process"
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "a worker outlived its gateway"
    folder = tmp_path / "training" / "runs"
    assert not list(folder.rglob("*.tmp")), "a half-written checkpoint was left behind"
    stored = _stored_keys(cfg, tmp_path)
    assert [k for k in stored if k.endswith("/weights/before-crash/checkpoint.json")], stored
    assert [k for k in stored if k.endswith("/adapter_model.safetensors")], stored
    assert [k for k in stored if k.endswith("/optimizer.pt")], stored
    # The local folders are only a cache: the restarted gateway must read the state from the store.
    shutil.rmtree(folder)

    proc = start_training_gateway(tmp_path, cfg)
    try:
        # The step in flight at the crash is a failed future after the restart, saying why (read from the
        # database: the SDK's own poller backs off for a minute while the gateway was down)
        db = sqlite3.connect(tmp_path / "hybridgate.db")
        rows = db.execute(
            "SELECT type, status, category, error FROM training_futures WHERE type='forward_backward'"
        ).fetchall()
        db.close()
        assert rows[-1][:3] == ("forward_backward", "failed", "server") and "restarted" in rows[-1][3]
        assert all(r[1] != "pending" for r in rows)
        run = httpx.get(
            f"{proc.url}/v1/training/runs/{tc.model_id}", headers={"Authorization": f"Bearer {key}"}
        ).json()
        assert run["status"] == "interrupted" and run["steps"] == 2
        sc = tinker.ServiceClient(base_url=proc.url + "/tinker", api_key=key)
        rc = tinker.RestClient(base_url=proc.url + "/tinker", api_key=key)
        ckpts = rc.list_checkpoints(tc.model_id).result().checkpoints
        assert [c.tinker_path for c in ckpts if c.checkpoint_type == "training"] == [state]
        resumed = sc.create_training_client_from_state_with_optimizer(state).result()
        assert resumed.forward(batch, "cross_entropy").result().metrics["loss:sum"] == pytest.approx(
            saved_loss, rel=1e-5
        )
        resumed.forward_backward(batch, "cross_entropy").result()
        resumed.optim_step(types.AdamParams(learning_rate=5e-3)).result()
        after = resumed.forward(batch, "cross_entropy").result().metrics["loss:sum"]
        assert after < saved_loss
        # Deleting the checkpoint removes it from the store
        rc.delete_checkpoint_from_tinker_path(state).result()
        assert rc.list_checkpoints(tc.model_id).result().checkpoints == []
        assert not [k for k in _stored_keys(cfg, tmp_path) if "/before-crash/" in k]
        sc.close("success")
    finally:
        proc.stop()
