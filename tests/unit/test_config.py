"""Loading jobs from files and entry points; every mistake is one clear ConfigError."""

from pathlib import Path

import pytest

from fedcare import ConfigError, FedAvg, Job, load_job

TESTS = Path(__file__).parents[1]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    (tmp_path / "myjob.py").write_text(
        "from toyjob import make_job\n"
        "def not_a_job(**kw):\n    return 42\n"
    )
    return path


def test_yaml_file_with_params_and_overrides():
    job = load_job(str(TESTS / "toy_job.yaml"), {"num_rounds": 5})
    assert isinstance(job, Job) and job.num_rounds == 5 and job.min_sites == 2
    assert job.source is not None and job.source.entry_point == "toyjob:make_job"
    assert job.source.search_path == str(TESTS.resolve())
    assert job.source.params == {"num_rounds": 5, "min_sites": 2}


@pytest.mark.parametrize("name, text", [
    ("job.toml", 'entry_point = "myjob:make_job"\n[params]\nnum_rounds = 4\n'),
    ("job.json", '{"entry_point": "myjob:make_job", "params": {"num_rounds": 4}}'),
])
def test_toml_and_json_files(tmp_path, name, text):
    assert load_job(str(write(tmp_path, name, text))).num_rounds == 4


def test_module_function_reference():
    job = load_job("fedcare.jobs.heart:make_job", {"num_rounds": 3})
    assert job.name == "heart" and job.num_rounds == 3 and isinstance(job.strategy, FedAvg)


@pytest.mark.parametrize("name, text, expected", [
    ("a.yaml", "entry_point: [oops\n", "cannot parse"),
    ("b.yaml", "entry_point: myjob:make_job\nrounds: 3\n",
     "rounds: Extra inputs are not permitted"),
    ("c.yaml", "params: {}\n", "entry_point: Field required"),
    ("d.yaml", "entry_point: 'rm -rf /'\n", "entry_point: String should match pattern"),
    ("e.yaml", "entry_point: nosuchmodule_xyz:make\n", "cannot import"),
    ("f.yaml", "entry_point: myjob:missing\n", "has no 'missing'"),
    ("g.yaml", "entry_point: myjob:make_job\nparams: {colour: red}\n", "bad params"),
    ("h.yaml", "entry_point: myjob:not_a_job\n", "returned int, not a fedcare Job"),
    ("i.yaml", "entry_point: myjob:make_job\nparams: {num_rounds: 0}\n", "num_rounds must be >= 1"),
    ("j.yaml", "entry_point: myjob:make_job\nparams: {min_sites: 9}\n", "min_sites=9 exceeds"),
    ("k.yaml", "- just\n- a list\n", "Input should be a valid dictionary"),
    ("l.txt", "entry_point: myjob:make_job\n", "unsupported extension"),
])
def test_bad_job_files(tmp_path, name, text, expected):
    with pytest.raises(ConfigError) as info:
        load_job(str(write(tmp_path, name, text)))
    assert expected in str(info.value)


def test_missing_file_and_bad_reference(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(str(tmp_path / "none.yaml"))
    with pytest.raises(ConfigError, match=r"neither a \.yaml/\.toml/\.json file nor module:"):
        load_job("just-a-name")


@pytest.mark.parametrize("kwargs, expected", [
    ({"num_rounds": 0}, "num_rounds"),
    ({"min_sites": 0}, "min_sites"),
    ({"round_timeout_s": 0}, "round_timeout_s"),
    ({"name": "bad name!"}, "job name"),
    ({"site_ids": ("a", "a")}, "duplicate site ids"),
])
def test_job_validates_at_construction(kwargs, expected):
    base = dict(name="j", initial_weights=dict, trainer=lambda ctx: None, strategy=FedAvg(),
                num_rounds=1)
    with pytest.raises(ConfigError, match=expected):
        Job(**{**base, **kwargs})
