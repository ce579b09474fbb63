"""Checkpoints: round trip, RNG states, the weights-only refusal of pickled objects, layout checks, and a failed
write under a real file size limit that leaves the previous last.pt byte-identical."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.models import build_model
from SegCore.training.checkpoint import (
    FORMAT,
    capture_rng_state,
    checkpoint_meta,
    load_checkpoint,
    save_checkpoint,
)
from SegCore.training.config import DataFacts, resolve_plan

FACTS = DataFacts(("CT",), ((0, "background"), (1, "spleen")), (32, 48, 48), (1.0, 1.0, 2.0))
REPO = Path(__file__).resolve().parents[1]


def _plan() -> dict:
    return resolve_plan({"model": {"name": "unet3d"}, "data": {"root": "/data/Task09_Spleen"}}, tiny=True,
                        facts=FACTS)


def _trained():
    """A tiny network and Adam after one real step, so that the optimizer state holds tensors."""
    torch.manual_seed(0)
    plan = _plan()
    model = build_model(plan["model"]["name"], **plan["model"]["arguments"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    model(torch.randn(2, 1, 16, 16, 16)).mean().backward()
    optimizer.step()
    scheduler.step()
    return plan, model, optimizer, scheduler


@pytest.fixture(scope="module")
def trained():
    """One trained tiny network for the tests that only save it (building and stepping it takes seconds)."""
    return _trained()


def _save(path, plan, model, optimizer, scheduler, **extra):
    fields = {"epoch": 3, "step": 7, "best_metric": 0.625, "history": [{"epoch": 1, "loss": 0.5}],
              "rng_state": capture_rng_state(), "meta": checkpoint_meta(plan, fingerprint_hash="abc123")}
    fields.update(extra)
    return save_checkpoint(path, model_state=model.state_dict(), optimizer_state=optimizer.state_dict(),
                           scheduler_state=scheduler.state_dict(), **fields)


def test_round_trip_is_bit_identical_and_loads_weights_only(tmp_path):
    plan, model, optimizer, scheduler = _trained()
    path = _save(tmp_path / "last.pt", plan, model, optimizer, scheduler)
    raw = torch.load(path, weights_only=True)  # the contract: PyTorch's own weights-only loader reads it
    assert raw["format"] == FORMAT
    ck = load_checkpoint(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(ck.model_state[name], tensor), name
        assert ck.model_state[name].dtype == tensor.dtype
    moments = optimizer.state_dict()["state"]
    for index, state in moments.items():
        assert torch.equal(ck.optimizer_state["state"][index]["exp_avg"], state["exp_avg"])
    assert (ck.epoch, ck.step, ck.best_metric) == (3, 7, 0.625)
    assert ck.history == [{"epoch": 1, "loss": 0.5}]
    assert ck.scheduler_state["last_epoch"] == 1
    meta = ck.meta
    assert meta["model"] == plan["model"] and meta["plan"] == plan and meta["spatial_dims"] == 3
    assert meta["channels"] == ["CT"]
    assert [(label["value"], label["name"]) for label in meta["labels"]] == [(0, "background"), (1, "spleen")]
    assert meta["provenance"]["fingerprint_hash"] == "abc123" and meta["provenance"]["fold"] == 0
    assert meta["provenance"]["torch"] == str(torch.__version__)
    # A second optimizer restored from the checkpoint takes the same next step as the original.
    rebuilt = ck.build_model()
    again = torch.optim.Adam(rebuilt.parameters(), lr=1e-3)
    again.load_state_dict(ck.optimizer_state)
    for m, o in ((model, optimizer), (rebuilt, again)):
        m.train()
        o.zero_grad()
        torch.manual_seed(5)
        m(torch.randn(2, 1, 16, 16, 16)).mean().backward()
        o.step()
    for (name, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_rng_states_restore_the_same_random_numbers(tmp_path, trained):
    plan, model, optimizer, scheduler = trained
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    np.random.standard_normal()  # leaves a cached gaussian half in numpy's state
    path = _save(tmp_path / "last.pt", plan, model, optimizer, scheduler)
    expected = (torch.rand(5), np.random.standard_normal(5), [random.random() for _ in range(5)])
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    load_checkpoint(path).restore_rng()
    got = (torch.rand(5), np.random.standard_normal(5), [random.random() for _ in range(5)])
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_pickled_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    # The malicious file is written in a subprocess, so the class is a real importable-looking object there.
    code = textwrap.dedent(f"""
        import torch
        class Payload:
            def __reduce__(self):
                return (open, ({str(marker)!r}, "w"))  # unpickling opens (creates) the marker file
        torch.save({{"format": "segstudies-checkpoint", "format_version": 1, "model_state": {{}},
                    "extra": Payload()}}, {str(path)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    assert path.is_file() and not marker.exists()
    with pytest.raises(SegCoreError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "pickled Python object" in message and "(io.open)" in message
    assert not marker.exists()
    # The same file through plain unpickling does run the payload: the test's file is really dangerous.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_saving_refuses_objects_that_would_not_load(tmp_path, trained):
    plan, model, optimizer, scheduler = trained
    with pytest.raises(TypeError, match="float64"):
        _save(tmp_path / "last.pt", plan, model, optimizer, scheduler, history=[{"loss": np.float64(0.5)}])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d.pop("meta"), "lacks the field meta"),
    (lambda d: d["meta"].pop("labels"), "meta.labels"),
    (lambda d: d.update(epoch="three"), "field epoch is a str"),
    (lambda d: d.update(format_version=99), "format version 99"),
    (lambda d: d.update(format="other"), "format 'other'"),
    (lambda d: d["meta"]["provenance"].pop("git_revision"), "meta.provenance.git_revision"),
])
def test_layout_errors_name_the_field(tmp_path, trained, change, words):
    plan, model, optimizer, scheduler = trained
    path = _save(tmp_path / "last.pt", plan, model, optimizer, scheduler)
    data = torch.load(path, weights_only=True)
    change(data)
    torch.save(data, path)
    with pytest.raises(SegCoreError, match=words) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_bare_state_dict_damaged_and_missing_files(tmp_path, trained):
    plan, model, *_ = trained
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(SegCoreError, match="bare state_dict"):
        load_checkpoint(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(SegCoreError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(SegCoreError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_weights_that_do_not_fit_the_meta_are_named(tmp_path, trained):
    plan, model, optimizer, scheduler = trained
    path = _save(tmp_path / "last.pt", plan, model, optimizer, scheduler)
    data = torch.load(path, weights_only=True)
    data["meta"]["model"]["arguments"]["resize_factor"] = 8
    torch.save(data, path)
    with pytest.raises(SegCoreError, match="do not fit the network 'unet3d'"):
        load_checkpoint(path).build_model()


def test_file_size_limit_leaves_previous_checkpoint_intact(tmp_path, trained):
    plan, model, optimizer, scheduler = trained
    last = _save(tmp_path / "last.pt", plan, model, optimizer, scheduler, epoch=1)
    before = last.read_bytes()
    limit = len(before) // 2
    # The child limits its own file size below the checkpoint's and ignores SIGXFSZ, so write() fails with EFBIG.
    code = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        import torch
        from SegCore.errors import SegCoreError
        from SegCore.training.checkpoint import load_checkpoint, save_checkpoint
        ck = load_checkpoint({str(last)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        try:
            save_checkpoint({str(last)!r}, model_state={{k: v + 1 for k, v in ck.model_state.items()}},
                            optimizer_state=ck.optimizer_state, epoch=2, step=0, best_metric=None,
                            history=ck.history, rng_state=ck.rng_state, meta=ck.meta)
        except SegCoreError as error:
            print(error)
            sys.exit(3)
        sys.exit(0)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert str(last) in result.stdout and "too large" in result.stdout.lower()
    assert last.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(last).epoch == 1
