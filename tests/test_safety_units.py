"""The mechanisms behind the adversarial suite, one by one: outputs kept apart from inputs, reads
that fail as one error, portable paths in results, config lookup, thread sizing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from critstep.errors import ConfigError, InputError, OutputError
from critstep.io import check_outputs_apart, portable_path, read_records


def test_an_output_equal_to_an_input_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "corpus.jsonl"
    data.write_text("{}\n")
    with pytest.raises(OutputError, match="--out is the input PATH: refusing to overwrite it"):
        check_outputs_apart({"PATH": data}, {"--out": data})
    # spelled differently, it is still the same file
    with pytest.raises(OutputError, match=r"--out is the input PATH \("):
        check_outputs_apart({"PATH": data}, {"--out": tmp_path / "sub" / ".." / "corpus.jsonl"})


def test_links_to_an_input_are_the_input(tmp_path: Path) -> None:
    data = tmp_path / "corpus.jsonl"
    data.write_text("{}\n")
    (tmp_path / "soft.jsonl").symlink_to(data)
    os.link(data, tmp_path / "hard.jsonl")
    for name in ("soft.jsonl", "hard.jsonl"):
        with pytest.raises(OutputError, match="is the input PATH"):
            check_outputs_apart({"PATH": data}, {"--out": tmp_path / name})
    with pytest.raises(OutputError, match="is the input PATH"):
        check_outputs_apart({"PATH": tmp_path / "hard.jsonl"}, {"--out": data})


def test_two_outputs_on_one_file_are_refused_and_distinct_paths_pass(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="--out and --cache are the same file"):
        check_outputs_apart({}, {"--out": tmp_path / "x.jsonl", "--cache": tmp_path / "x.jsonl"})
    check_outputs_apart({"PATH": tmp_path / "a", "--prices": None}, {"--out": tmp_path / "b", "--cache": None})


def test_a_device_output_is_not_an_input(tmp_path: Path) -> None:
    # /dev/null is written through, never replaced: reading from it and writing to it is harmless.
    check_outputs_apart({"PATH": "/dev/null"}, {"--out": "/dev/null"})


def test_an_input_inside_a_directory_written_whole_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    labels = out / "labels.jsonl"
    labels.write_text("{}\n")
    with pytest.raises(OutputError, match=r"the input --labels \(.*labels.jsonl\) lies in --out, which is replaced whole"):
        check_outputs_apart({"--labels": labels}, {}, {"--out": out})
    with pytest.raises(OutputError, match="--out is the input ADAPTER"):
        check_outputs_apart({"ADAPTER": out}, {}, {"--out": out})
    check_outputs_apart({"--labels": labels, "REF": "smollm2-135m"}, {}, {"--out": tmp_path / "elsewhere"})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is a directory, not a file"),
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"\xff\xfe{}"), "not UTF-8"),
    ],
)
def test_unreadable_inputs_are_one_input_error(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "in.jsonl"
    make(path)
    with pytest.raises(InputError, match=message):
        read_records(path)


def test_permission_denied_and_io_errors_on_read_are_one_input_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("{}\n")

    import critstep.streams

    def denied(file, *a, **k):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(critstep.streams, "open", denied, raising=False)  # root may read anything
    with pytest.raises(InputError, match="in.jsonl: cannot read: Permission denied"):
        read_records(path)


def test_a_device_is_not_read_as_a_file() -> None:
    with pytest.raises(InputError, match="is a device"):
        read_records("/dev/zero")  # would never end


def test_portable_paths_are_never_absolute(tmp_path: Path, monkeypatch) -> None:
    from critstep.configs import CONFIG_DIR

    monkeypatch.chdir(tmp_path)
    assert portable_path(CONFIG_DIR / "prices.yaml") == "critstep/configs/prices.yaml"
    assert portable_path(tmp_path / "a" / "b.jsonl") == "a/b.jsonl"
    assert portable_path("rel/x.jsonl") == "rel/x.jsonl"
    elsewhere = portable_path("/somewhere/else/x.jsonl")
    assert not os.path.isabs(elsewhere) and elsewhere.endswith("somewhere/else/x.jsonl")


def test_configs_resolve_from_here_first_then_from_the_package(tmp_path: Path, monkeypatch) -> None:
    from critstep.configs import CONFIG_DIR, resolve_config

    monkeypatch.chdir(tmp_path)
    assert resolve_config("configs/prices.yaml") == CONFIG_DIR / "prices.yaml"
    assert resolve_config("tune-smollm2-135m-cpu.yaml") == CONFIG_DIR / "tune-smollm2-135m-cpu.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "prices.yaml").write_text("models: {}\n")
    assert resolve_config("configs/prices.yaml") == Path("configs/prices.yaml")  # the user's own copy wins
    with pytest.raises(ConfigError, match="nowhere.yaml: no such file here, nor among critstep's configs .*prices.yaml"):
        resolve_config("configs/nowhere.yaml")


def test_loaders_take_shipped_config_names_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    from critstep.compare.costs import load_compute_prices
    from critstep.selector.oracle.pricing import load_prices
    from critstep.tuner import TuneConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CRITSTEP_PRICES", raising=False)
    assert load_prices("configs/prices.yaml").known("gpt-4o")
    assert load_prices().path == "critstep/configs/prices.yaml"
    assert load_compute_prices().path == "critstep/configs/compute_prices.yaml"
    assert TuneConfig.from_yaml("configs/tune-smollm2-135m-cpu.yaml").model == "smollm2-135m"


@pytest.mark.parametrize(("cores", "load", "threads"), [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 9.0, 1), (16, 3.2, 13)])
def test_threads_are_sized_to_the_free_cores(cores: int, load: float, threads: int) -> None:
    from critstep.runtime import free_cores

    assert free_cores(cores, load) == threads


def test_thread_settings_respect_the_user_and_a_loaded_torch(monkeypatch) -> None:
    import sys

    from critstep import runtime

    monkeypatch.setattr(runtime, "free_cores", lambda: 1)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    env: dict[str, str] = {"OMP_NUM_THREADS": "4"}
    assert runtime.configure_cpu_threads(env) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == {"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "PASSIVE"}
    env = {}
    assert runtime.configure_cpu_threads(env) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    monkeypatch.setitem(sys.modules, "torch", object())  # torch loaded: OpenMP has read its settings
    assert runtime.configure_cpu_threads({}) == {}
