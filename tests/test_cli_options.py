"""The command line generated from the config dataclasses: the same flags as before, each setting declared once."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
from conftest import assert_user_error, run_cli, run_cli_process

from textjepa.cli import build_parser, command_config
from textjepa.cli.options import add_config_arguments, config_from_args, given_options, iter_options
from textjepa.cli.seed_form import translate_seed_form
from textjepa.config import DEFAULT_BACKBONE, PRETRAINED_RECIPES, WorldConfig, setting

# Every flag and positional each command had before its parser was generated (taken from the hand-written
# parsers it replaced). Flags may be added; none may go.
FLAGS_BEFORE = {
    "latent": "--batch --data-dir --device --dim --ema-end --ema-start --eval-batches --eval-every --global-batch "
    "--heads --layers --lr --max-line-bytes --max-masked-ratio --max-seq --max-span-len --max-spans --max-vocab "
    "--min-tokens --no-bucket --no-progress --out-dir --regularizer --resume --seed --steps --val-fraction",
    "eval-jepa": "--batch --data-dir --device --dim --heads --json --layers --max-seq --seed --split --steps --vocab",
    "train-world": "--batch --bridge-dim --data-dir --device --dim --ema-end --ema-start --encoder-lr-scale "
    "--eval-batches --eval-every --freeze-encoder-steps --global-batch --heads --infonce-weight --init-encoder "
    "--layers --lr --max-line-bytes --max-seq --max-vocab --min-tokens --no-bucket --no-progress --out-dir "
    "--regularizer --reply-contrast-weight --resume --seed --steps --temperature --val-fraction",
    "eval-world": "--batch --bridge-dim --data-dir --device --dim --heads --json --layers --max-seq --seed --split "
    "--steps --vocab",
    "infer": "--ablate-conditioning --bridge --bridge-dim --decoder --decoder-model --device --dim --heads --json "
    "--layers --max-new-tokens --max-seq --temperature --top-k --vocab",
    "demo": "--device --dim --eval-every --heads --latent-steps --layers --max-seq --max-vocab --no-progress "
    "--out-dir --prompt --world-steps",
    "prepare hub": "--data-dir --mode",
    "prepare ultrachat": "--context-window --max-rows --min-tokens --no-progress --split",
    "prepare expert": "--dataset --max-rows --min-answer-words --no-progress --no-support --output --split",
    "prepare jsonl": "--input-dir --input_dir --max-tokens --max_tokens --min-tokens --min_tokens --no-progress "
    "--output",
    "prepare mix": "--no-progress --output --seed --shuffle",
    "prepare demo": "--out-dir",
    "serve": "--api-key --bind --bridge --bridge-dim --debug --decoder --decoder-model --default-max-tokens --device "
    "--dim --heads --host --layers --max-batch --max-body-bytes --max-concurrency --max-queue --max-seq "
    "--max-tokens-limit --model-id --port --queue-timeout --vocab",
    "train-bridge": "--align-lr --align-steps --batch --data-dir --decoder-model --device --eval-every --lr "
    "--max-prompt-tokens --max-reply-tokens --no-progress --oracle-latent --out --out-dir --prefix-tokens "
    "--prompt-dropout --seed --steps --target-mix --val-pairs",
    "eval-conditioning": "--batch --data-dir --decoder-model --device --json --max-pairs --max-prompt-tokens "
    "--max-reply-tokens --no-progress --seed",
}
POSITIONALS_BEFORE = {
    "latent": ["DATA"],
    "eval-jepa": ["MODEL", "DATA"],
    "train-world": ["DATA"],
    "eval-world": ["MODEL", "DATA"],
    "infer": ["MODEL", "PROMPT"],
    "prepare hub": ["DATASET"],
    "prepare ultrachat": ["OUTPUT"],
    "prepare mix": ["INPUT"],
    "serve": ["MODEL"],
    "train-bridge": ["WORLD_MODEL", "DATA"],
    "eval-conditioning": ["WORLD_MODEL", "BRIDGE", "DATA"],
}


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(subcommands(sub, f"{prefix}{name} "))
    return found


def parse(*argv: str) -> tuple[object, argparse.Namespace]:
    """(the command's config, the namespace) as the CLI builds them, without running the command."""
    args = build_parser().parse_args(translate_seed_form(list(argv)))
    return command_config(args), args


def test_every_flag_and_positional_of_before_is_still_there():
    commands = subcommands(build_parser())
    for command, flags in FLAGS_BEFORE.items():
        parser = commands[command]
        have = {option for action in parser._actions for option in action.option_strings}
        missing = set(flags.split()) - have
        assert not missing, f"{command} lost {sorted(missing)}"
        positionals = [action.metavar for action in parser._actions if not action.option_strings]
        assert [p for p in positionals if p] == POSITIONALS_BEFORE.get(command, []), command
        assert "usage" in parser.format_help()


def test_per_command_defaults_and_nested_configs():
    latent, _ = parse("latent", "data.txt", "--backbone", "scratch")
    world, _ = parse("train-world", "pairs.txt", "--backbone", "scratch")
    assert (latent.train.lr, latent.train.ema_start, latent.data.min_tokens) == (5e-4, 0.996, 2)
    assert (world.train.lr, world.train.ema_start, world.train.ema_end, world.data.min_tokens) == (3e-4, 0.99, 0.999, 1)
    bridge, _ = parse("train-bridge", "w.safetensors", "pairs.txt", "--lr", "1e-3", "--no-progress", "--oracle-latent")
    assert (bridge.train.steps, bridge.train.batch, bridge.train.lr, bridge.train.weight_decay) == (1200, 8, 1e-3, 0.0)
    assert (bridge.train.progress, bridge.oracle, bridge.world_model, bridge.data) == (
        False,
        True,
        "w.safetensors",
        "pairs.txt",
    )
    demo, _ = parse("demo", "--dim", "64", "--prompt", "a", "--prompt", "b")
    assert (demo.model.dim, demo.model.vocab_size, demo.model.heads, demo.train.eval_every) == (64, 4000, 4, 200)
    assert demo.prompts == ("a", "b")
    assert parse("demo")[0].prompts == ("What does `json.dumps(obj)` do?", "What does `shutil.copyfile(src, dst)` do?")


def test_a_training_commands_encoder_and_the_recipe_it_brings():
    """Named, MiniLM by default; scratch for a scratch shape option or the seed's forms. A pretrained backbone lays
    its measured recipe over the command's defaults; an option the user gives still wins."""
    world, _ = parse("train-world", "pairs.txt")
    recipe = PRETRAINED_RECIPES["train-world"]
    assert world.model.backbone == DEFAULT_BACKBONE == "minilm"
    assert (world.train.steps, world.train.lr, world.model.transition) == (
        recipe["train.steps"],
        recipe["train.lr"],
        recipe["model.transition"],
    )
    assert world.loss.regularization.var_weight == recipe["loss.regularization.var_weight"]
    assert parse("train-world", "pairs.txt", "--lr", "3e-3", "--backbone", "m/")[0].train.lr == 3e-3
    assert parse("train-world", "pairs.txt", "--backbone", "m/")[0].train.steps == recipe["train.steps"]
    for argv in (
        ("train-world", "pairs.txt", "--dim", "64"),
        ("train-world", "pairs.txt", "--max-vocab", "500"),
        ("--train-world", "pairs.txt", "10"),
        ("--latent", "data.txt"),
        ("latent", "data.txt", "--layers", "2"),
        ("demo", "--heads", "2"),
    ):
        cfg, _ = parse(*argv)
        assert cfg.model.backbone == "scratch", argv
        assert cfg.train.lr == type(cfg)().train.lr, argv  # the command's own defaults, no recipe
    latent, _ = parse("latent", "data.txt")
    assert (latent.model.backbone, latent.train.lr) == ("minilm", PRETRAINED_RECIPES["latent"]["train.lr"])
    demo, _ = parse("demo")
    assert (demo.model.backbone, demo.latent_steps, demo.world_steps) == (
        "minilm",
        PRETRAINED_RECIPES["demo"]["latent_steps"],
        PRETRAINED_RECIPES["demo"]["world_steps"],
    )
    assert "--backbone minilm unless" in subcommands(build_parser())["train-world"].format_help()


def test_init_encoder_brings_its_checkpoints_encoder(tiny_latent):
    """With --init-encoder the checkpoint says which encoder it is, so no recipe of another is laid over it."""
    world, _ = parse("train-world", "pairs.txt", "--init-encoder", str(tiny_latent["model"]))
    assert world.model.backbone == "scratch" and world.train.lr == WorldConfig().train.lr


def test_renamed_flags_booleans_and_seed_form():
    cfg, args = parse("--latent", "d.txt", "7", "16", "64", "--no-bucket", "--no-progress", "--max-vocab", "500")
    assert (cfg.data.path, cfg.train.steps, cfg.train.batch, cfg.model.dim) == ("d.txt", 7, 16, 64)
    assert (cfg.model.vocab_size, cfg.train.bucket_by_length, cfg.train.progress) == (500, False, False)
    world, args = parse("train-world", "p.txt", "--dim", "64", "--max-vocab", "400", "--init-encoder", "a", "b")
    assert world.init_encoder == ["a", "b"]
    shape = given_options(args, (o for o in iter_options(world) if o.dest.startswith("model.")))
    assert shape == {"dim": 64, "max_vocab": 400}  # only what was given, by the names users know
    infer, args = parse("--infer-agent", "m.safetensors", "v.json", "hello", "64")
    assert (infer.model, infer.vocab, infer.prompt, infer.temperature) == ("m.safetensors", "v.json", "hello", None)
    assert args.__dict__["shape.dim"] == 64
    jsonl, _ = parse("prepare", "jsonl", "--input_dir", "shards", "--min_tokens", "3")
    assert (jsonl.input_dir, jsonl.min_tokens, jsonl.max_tokens) == ("shards", 3, 200)


@dataclasses.dataclass
class InnerLoss:
    """an added loss"""

    margin_weight: float = dataclasses.field(default=0.5, metadata={"help": "weight of the margin term"})


@dataclasses.dataclass
class Outer:
    steps: int = setting(3, help="steps")
    loss: InnerLoss = setting(default_factory=InnerLoss)
    internal: list[str] = setting(default_factory=list, cli=False, help="not an option")


def test_a_nested_config_with_help_metadata_becomes_options_without_cli_code():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Outer())
    text = parser.format_help()
    assert "--margin-weight" in text and "weight of the margin term (default 0.5)" in text and "an added loss" in text
    assert "--internal" not in text
    cfg = config_from_args(Outer(), parser.parse_args(["--margin-weight", "2"]))
    assert cfg == Outer(steps=3, loss=InnerLoss(margin_weight=2.0))


def test_two_fields_making_the_same_flag_fail_when_the_parser_is_built():
    @dataclasses.dataclass
    class Clash:
        steps: int = setting(1, help="a")
        inner: Outer = setting(default_factory=Outer)

    with pytest.raises(argparse.ArgumentError, match="--steps"):
        add_config_arguments(argparse.ArgumentParser(), Clash())


def test_usage_errors_are_one_line():
    assert_user_error(run_cli("latent", "x.txt", "--steps", "many"), "--steps", "invalid int")
    assert_user_error(run_cli("latent", "x.txt", "--regularizer", "none"), "invalid choice")
    result = run_cli("train-bridge", "--help")
    assert result.returncode == 0 and "--oracle-latent" in result.stdout and "(default 1200)" in result.stdout


def test_the_package_reads_the_environment_only_in_settings():
    found = subprocess.run(
        ["grep", "-rlE", r"os\.environ|os\.getenv", "textjepa"], capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    assert found == ["textjepa/settings.py"], found


ROOT = __import__("conftest").REPO_ROOT


def test_the_options_reference_in_the_docs_is_up_to_date(tmp_path):
    from textjepa.cli.reference import rewrite

    docs = tmp_path / "commands.md"
    docs.write_text((ROOT / "docs" / "commands.md").read_text(encoding="utf-8"), encoding="utf-8")
    assert not rewrite(docs), "docs/commands.md is out of date: python -m textjepa.cli.reference docs/commands.md"


def test_settings_snapshot_parses_on_use_and_names_the_variable():
    from textjepa.errors import TextJepaError
    from textjepa.settings import Settings

    settings = Settings.from_env({"TEXTJEPA_NUM_THREADS": "abc", "JEPA_DECODER_CTX": " 512 ", "UNRELATED": "x"})
    assert settings.decoder_overrides == {"ctx": 512} and settings.api_key is None
    assert "UNRELATED" not in settings.values
    with pytest.raises(TextJepaError, match="TEXTJEPA_NUM_THREADS='abc' is not a whole number"):
        _ = settings.num_threads
    with pytest.raises(KeyError, match="add it to settings.VARIABLES"):
        settings.get("SOME_NEW_VARIABLE")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-bridge", "w.safetensors", "p.txt", "--prefix-tokens", "0"], "--prefix-tokens must be between 1"),
        (["train-bridge", "w.safetensors", "p.txt", "--align-batch", "0"], "--align-batch must be at least 1"),
        (["train-bridge", "w.safetensors", "p.txt", "--target-mix", "1.5"], "--target-mix must be between 0 and 1"),
        (["eval-conditioning", "w.safetensors", "b.safetensors", "--max-pairs", "0"], "--max-pairs must be at least"),
        (["latent", "x.txt", "--heads", "5"], "must divide dim"),
        (["train-world", "x.txt", "--batch", "1"], "batch must be at least 2"),
    ],
)
def test_a_bad_option_is_reported_before_torch_is_imported(argv, message):
    # The check is the config's own validate(), run before the command's library (and torch) is imported, so a
    # typo costs a fraction of a second; the files named need not exist.
    code = (
        "import sys; from textjepa.cli import main; code = main(sys.argv[1:]); "
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout.strip() == "torch not imported"


def _just_outside(bounds: dict) -> list[float]:
    """Values just outside each numeric bound (a float bound is left by a fraction, an int one by 1)."""
    step = lambda bound: 0.5 if isinstance(bound, float) else 1  # noqa: E731
    values = [bounds["min"] - step(bounds["min"])] if bounds.get("min") is not None else []
    values += [bounds["max"] + step(bounds["max"])] if bounds.get("max") is not None else []
    values += [bounds[key] for key in ("above", "below") if bounds.get(key) is not None]
    return values + (["nan"] if bounds.get("above") is not None else [])


def test_every_declared_bound_is_checked_and_the_error_names_the_flag():
    # validate() is generated from the bounds declared with each field: every bounded option of every command,
    # given a value just outside, fails in one line that names the flag as the user gives it; nested configs'
    # bounds hold where they are used (train-bridge may run no LM steps: --steps 0 is in bounds there).
    from textjepa.errors import TextJepaError

    checked = 0
    for command, parser in subcommands(build_parser()).items():
        defaults = parser.get_default("config_defaults")
        if defaults is None:
            continue
        base = command.split()
        for action in parser._actions:
            if not action.option_strings and action.dest not in ("help", "command") and action.nargs != 0:
                base.append("x.txt")
            elif action.required:
                base += [action.option_strings[0], action.choices[0] if action.choices else "out.npy"]
        config, _ = parse(*base)
        config.validate()
        for option in iter_options(defaults):
            for bad in _just_outside(dict(option.bounds)) if not option.meta.get("positional") else ():
                config, _ = parse(*base, f"--{option.flag}", str(bad))
                with pytest.raises(TextJepaError) as failure:
                    config.validate()
                message = str(failure.value)
                assert message.startswith(f"--{option.flag} must be ") and "\n" not in message, (command, message)
                checked += 1
    assert checked > 40
    bridge, _ = parse("train-bridge", "w.safetensors", "p.txt", "--steps", "0")
    bridge.validate()
    help_text = " ".join(subcommands(build_parser())["train-bridge"].format_help().split())
    assert "K soft tokens, between 1 and 64 (default 8)" in help_text and "at least 0 (default 1200)" in help_text


@pytest.mark.parametrize(
    "argv",
    [
        ("--version",),
        ("train-world",),  # a usage error
        ("infer", "{world}", "tell me about music please"),  # an answer, with the precision note on stderr
        ("eval-world", "{world}", "--steps", "2", "--batch", "8", "--data-dir", "{cache}", "--split", "val"),
        ("export", "{world}", "--out", "exported"),  # written relative to the working directory
    ],
)
def test_the_cli_in_the_test_process_answers_as_a_subprocess_does(argv, tiny_world, tmp_path):
    """conftest's run_cli runs the real main() in this process (no 2-3 CPU-s of imports per call); what a user
    sees, exit code, stdout and stderr, must be what the installed command gives them in a process of its own."""
    values = {"world": tiny_world["world"], "cache": tiny_world["cache"]}
    results = []
    for runner in (run_cli, run_cli_process):
        where = tmp_path / runner.__name__
        where.mkdir()
        args = [a.format(**values) for a in argv]
        result = runner(*args, cwd=where)
        written = sorted(path.name for path in where.iterdir())
        results.append(
            (
                result.returncode,
                *(text.replace(str(where), "<tmp>") for text in (result.stdout, result.stderr)),
                written,
            )
        )
    assert results[0] == results[1]
    if argv[0] == "export":
        assert results[0][3] == ["exported"]
