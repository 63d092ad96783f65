"""kill -9 of the gateway in the middle of a run: its workers go too, and after a restart the saved
checkpoints are intact and the run continues from its last saved state (with the official tinker SDK)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from _training import make_key, start_training_gateway, tiny_model, training_config  # noqa: F401
from hybridgate.testing.procs import write_config

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


def test_a_killed_gateway_leaves_intact_checkpoints_and_the_run_continues(
    tmp_path: Path,
    tiny_model: Path,  # noqa: F811
) -> None:
    cfg = training_config(tmp_path, tiny_model)
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
    assert any(folder.rglob("adapter_model.safetensors")) and any(folder.rglob("optimizer.pt"))
    assert not list(folder.rglob("*.tmp")), "a half-written checkpoint was left behind"

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
        sc.close("success")
    finally:
        proc.stop()
