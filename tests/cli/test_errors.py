"""One-line errors, and the traceback behind them on request (`--debug`, `CONVIRT_DEBUG=1`)."""

from convirt.cli.main import main


def test_an_error_is_one_line_that_says_how_to_see_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CONVIRT_DEBUG", raising=False)
    assert main(["index", "build", "--embeddings", str(tmp_path / "none"), "--output", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convirt: error: no embeddings in ") and "\n" not in err and "--debug" in err


def test_debug_shows_the_traceback_by_flag_or_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CONVIRT_DEBUG", raising=False)
    args = ["index", "build", "--embeddings", str(tmp_path / "none"), "--output", str(tmp_path / "i")]
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err
    assert err.strip().splitlines()[-1].startswith("convirt: error: no embeddings in ")
    monkeypatch.setenv("CONVIRT_DEBUG", "1")
    assert main(args) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_embed_on_several_nodes_without_a_launcher_says_so(
    tiny_checkpoint, phantom_shards, tmp_path, capsys, monkeypatch
):
    # Without torchrun or srun the ranks of the other node never come: it would wait forever.
    from convirt.training.launch import LAUNCHER_VARIABLES

    for name in LAUNCHER_VARIABLES:  # none left by another test or the shell
        monkeypatch.delenv(name, raising=False)
    args = ["embed", "--checkpoint", str(tiny_checkpoint), "--data", str(phantom_shards), "--output", str(tmp_path)]
    assert main([*args, "--num-nodes", "2"]) != 0
    assert "needs a launcher on every node (torchrun --nnodes 2" in capsys.readouterr().err


def test_fit_on_several_nodes_without_a_launcher_says_so(
    phantom_shards, tiny_text_model, tmp_path, capsys, monkeypatch
):
    # The same for `convirt fit --trainer.num_nodes 2`: refused before a model is built.
    from convirt.training.launch import LAUNCHER_VARIABLES

    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert main(_fit_on_2x2(tiny_text_model, phantom_shards, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "--trainer.num_nodes 2 needs a launcher on every node (torchrun --nnodes 2 --nproc_per_node 2" in err
    assert "Traceback" not in err


def test_a_slurm_job_lightning_refuses_is_said_in_one_line(
    tiny_checkpoint, tiny_text_model, phantom_shards, tmp_path, capsys, monkeypatch
):
    # srun with --ntasks but no --ntasks-per-node: Lightning raises a RuntimeError, said in one line here.
    slurm = {"SLURM_NTASKS": "4", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "j", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0"}
    for name, value in {**slurm, "SLURM_NODELIST": "127.0.0.1", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    args = ["embed", "--checkpoint", str(tiny_checkpoint), "--data", str(phantom_shards), "--output", str(tmp_path)]
    assert main([*args, "--num-nodes", "2", "--devices", "2", "--accelerator", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convirt: error: Lightning cannot start this run: You set `--ntasks=4`") and "\n" not in err
    # And `convirt fit` under the same srun (its trainer made by LightningCLI).
    assert main(_fit_on_2x2(tiny_text_model, phantom_shards, tmp_path / "fit")) == 2
    err = capsys.readouterr().err.strip()
    assert "convirt: error: Lightning cannot start this run: You set `--ntasks=4`" in err and "Traceback" not in err


def _fit_on_2x2(text_model, shards, root) -> list[str]:
    """`convirt fit` of the tiny model on 2 nodes x 2 CPU processes."""
    from tests.conftest import TINY_MODEL

    model = ["--model.model_name", TINY_MODEL, "--model.pretrained", "false", "--model.text_model_path", text_model]
    trainer = ["--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "2"]
    return ["fit", *model, "--data.shards", str(shards), "--trainer.default_root_dir", str(root), *trainer]
