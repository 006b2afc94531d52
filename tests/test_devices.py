"""Where a study trains (issue 27, part 1): ``[train] device`` in experiment files and study.toml,
``--device``, the run's identity and record, Ray's GPU share per task. The CPU-side logic is
tested here; ``tests/test_cuda.py`` runs a study on a GPU where one is lent."""

import json
import re

import pytest
import torch
from click.testing import CliRunner

from reglab.cli import main
from reglab import devices
from reglab.devices import DeviceError
from reglab.experiments.devices import place, ray_device
from reglab.experiments.schema import ConfigError
from reglab.experiments.study import load_specs

from .test_experiments import TINY, one, run, write

NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_the_device_grammar(value):
    assert devices.check(value, "here") == value


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:00", "mps", "", 0, None, "cpu "])
def test_a_device_outside_the_grammar_is_refused(value):
    with pytest.raises(DeviceError, match=r"^here: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"; got "):
        devices.check(value, "here")


def test_kind_and_resolve_on_this_machine():
    assert devices.kind(None) == devices.kind("cpu") == "cpu"
    assert devices.kind("cuda:3") == devices.kind("cuda") == "cuda"
    assert devices.kind("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.resolve(None, "w") == devices.resolve("cpu", "w") == "cpu"
    if NO_GPU:
        assert devices.resolve("auto", "w") == "cpu"
        with pytest.raises(DeviceError, match=r"^w: 'cuda:1', but torch sees no CUDA GPU on this machine "
                                              r"\(torch.cuda.is_available\(\) is False"):
            devices.resolve("cuda:1", "w")
    else:
        n = torch.cuda.device_count()
        assert devices.resolve("auto", "w") == f"cuda:{torch.cuda.current_device()}"
        with pytest.raises(DeviceError, match=rf"'cuda:{n}', but this machine has {n} GPU\(s\): cuda:0 to "
                                              rf"cuda:{n - 1}"):
            devices.resolve(f"cuda:{n}", "w")


def test_the_record_names_the_device():
    rec = devices.record("cpu")
    assert rec["device"] == "cpu" and rec["device_name"] == devices.cpu_name() and rec["device_name"]


@pytest.mark.parametrize("value, gpus, want", [(None, 0.5, "cuda"), ("auto", 0.25, "cuda"), ("cuda", 1, "cuda"),
                                               (None, 0, "cpu"), ("auto", 0, "cpu"), ("cpu", 0, "cpu")])
def test_a_ray_task_trains_where_its_gpu_share_says(value, gpus, want):
    assert ray_device(value, gpus, "w") == want


@pytest.mark.parametrize("value, gpus, message", [
    ("cpu", 0.5, r"\"cpu\", but --gpus-per-task 0.5 asks a GPU share for every task"),
    ("cuda:1", 0.5, r"on Ray a task gets the GPU Ray gives it; say \"cuda\" or \"auto\""),
    ("cuda", 0, r"'cuda' on Ray needs a GPU share per task: add --gpus-per-task"),
])
def test_a_ray_device_that_cannot_be_is_refused(value, gpus, message):
    with pytest.raises(DeviceError, match=message):
        ray_device(value, gpus, "w")


def _device_file(tmp_path, device, name="dev.toml"):
    return write(tmp_path, TINY.replace("batch_size = 20", f'batch_size = 20\ndevice = "{device}"'), name)


def test_a_gpu_run_is_another_run_than_a_cpu_run_whichever_gpu(tmp_path):
    """The identity (digest) says cpu or cuda; "cpu" and no device are the same run as before
    devices existed; cuda:0 and cuda:1 the same run (which GPU is recorded, not part of it)."""
    plain = one(write(tmp_path, TINY))
    cpu = one(_device_file(tmp_path, "cpu", "cpu.toml"))
    c0, c1 = one(_device_file(tmp_path, "cuda:0", "c0.toml")), one(_device_file(tmp_path, "cuda:1", "c1.toml"))
    assert plain.digest() == cpu.digest()
    assert c0.digest() == c1.digest() != plain.digest()
    assert c0.baseline().config["train"]["device"] == "cuda:0"  # the baseline trains where its experiment does
    placed = place([cpu, c0], "cpu")
    assert [s.digest() for s in placed] == [plain.digest()] * 2
    assert all("device" not in s.config["train"] for s in placed)


def test_an_unknown_device_in_a_file_names_the_file_and_key(tmp_path):
    p = _device_file(tmp_path, "tpu")
    with pytest.raises(ConfigError, match=re.escape(f"{p}: train.device: expected") + ".*got 'tpu'"):
        one(p)


def test_study_toml_sets_the_device_of_files_that_do_not(tmp_path):
    exp = tmp_path / "experiments"
    exp.mkdir()
    write(exp, TINY, "a.toml")
    write(exp, TINY.replace('name = "tiny"', 'name = "b"').replace("batch_size = 20", 'batch_size = 20\ndevice = "cuda:1"'),
          "b.toml")
    (tmp_path / "study.toml").write_text('experiments = "experiments"\n[train]\ndevice = "cpu"\n')
    specs = {s.name: s for s in load_specs([str(tmp_path)])}
    assert specs["tiny"].config["train"]["device"] == "cpu"  # the study's
    assert specs["b"].config["train"]["device"] == "cuda:1"  # its own
    (tmp_path / "study.toml").write_text('experiments = "experiments"\n[train]\ndevice = "cpu"\nepochs = 3\n')
    with pytest.raises(ConfigError, match=r"study.toml: train: a study's \[train\] table holds only device"):
        load_specs([str(tmp_path)])
    (tmp_path / "study.toml").write_text('experiments = "experiments"\n[train]\ndevice = "gpu"\n')
    with pytest.raises(ConfigError, match=r"study.toml: train.device: expected .* got 'gpu'"):
        load_specs([str(tmp_path)])


@pytest.mark.skipif(not NO_GPU, reason="the error of a machine without a GPU")
@pytest.mark.parametrize("how", ["flag", "file"])
def test_cuda_without_a_gpu_is_refused_before_anything_trains(tmp_path, how):
    p = _device_file(tmp_path, "cuda") if how == "file" else write(tmp_path, TINY)
    res = run([p], tmp_path / "out", *(["--device", "cuda"] if how == "flag" else []))
    assert res.exit_code == 1
    where = "--device" if how == "flag" else f"{p}: train.device"
    assert f"Error: {where}: 'cuda', but torch sees no CUDA GPU on this machine" in res.output
    assert not (tmp_path / "out" / "runs").exists()


def test_device_flag_over_the_file_and_the_run_records_where_it_trained(tmp_path):
    """A file that says cuda trains on the CPU with --device cpu (as the same run as a file
    without a device); each run's JSON says the device and its name."""
    res = run([_device_file(tmp_path, "cuda:1")], tmp_path / "out", "--device", "cpu", "--no-baselines")
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "out" / "runs" / "tiny").glob("*.json"))
    assert len(files) == 2
    row = json.loads(files[0].read_text())
    assert row["device"] == "cpu" and row["device_name"] == devices.cpu_name()
    assert row["digest"] == one(write(tmp_path, TINY, "plain.toml")).digest()
    res = run([write(tmp_path, TINY, "plain.toml")], tmp_path / "out", "--no-baselines")
    assert "0 runs trained, 2 already done" in res.output


def test_a_bad_device_flag_is_a_clear_error(tmp_path):
    res = run([write(tmp_path, TINY)], tmp_path / "out", "--device", "gpu")
    assert res.exit_code == 1 and "Error: --device: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"; got 'gpu'" in \
        res.output
    res = run([write(tmp_path, TINY)], tmp_path / "out", "--gpus-per-task", "0.5")
    assert res.exit_code == 2 and "--gpus-per-task is a Ray task's GPU share: use it with --backend ray" in res.output


def test_path_takes_the_device_flag(tmp_path):
    res = CliRunner().invoke(main, ["path", str(write(tmp_path, TINY)), "--strengths", "0,0.01", "--seeds", "2",
                                    "--out", str(tmp_path / "out"), "--device", "cuda:0" if NO_GPU else "gpu"])
    assert res.exit_code == 1
    assert "--device: " in res.output and not (tmp_path / "out" / "paths").exists()


def test_fit_and_fit_many_take_the_device_grammar():
    """``device="auto"`` trains where a GPU is, else on the CPU; a GPU torch does not see is a
    clear error (torch's own says "Torch not compiled with CUDA enabled")."""
    import numpy as np

    import reglab

    x, y = np.zeros((8, 2), np.float32), np.zeros((8, 1), np.float32)
    m = torch.nn.Linear(2, 1)
    reglab.fit(m, x, y, loss="mse", device="auto", progress=False)
    assert next(m.parameters()).device.type == devices.kind("auto")
    many = reglab.fit_many(lambda: torch.nn.Linear(2, 1), x, y, seeds=[0, 1], loss="mse", device="auto")
    assert next(many.models[0].parameters()).device.type == devices.kind("auto")
    if NO_GPU:
        with pytest.raises(DeviceError, match=r"^device: 'cuda', but torch sees no CUDA GPU"):
            reglab.fit(torch.nn.Linear(2, 1), x, y, loss="mse", device="cuda", progress=False)
        with pytest.raises(DeviceError, match=r"^device: 'cuda:0', but torch sees no CUDA GPU"):
            reglab.fit_many(lambda: torch.nn.Linear(2, 1), x, y, seeds=[0], loss="mse", device="cuda:0")
