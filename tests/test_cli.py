"""The CLI as a user runs it: registry listing, promotion, rollback, errors that say what to do."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, cli


def test_models_list_promote_rollback(trained_registry, tmp_path):
    import shutil

    root = tmp_path / "reg"
    shutil.copytree(trained_registry, root)
    v1 = (root / "models" / "CURRENT").read_text().strip()
    # A second version, registered but not serving.
    v2 = "v0002"
    shutil.copytree(root / "models" / v1, root / "models" / v2)
    manifest = json.loads((root / "models" / v2 / "manifest.json").read_text())
    manifest["version"] = v2
    (root / "models" / v2 / "manifest.json").write_text(json.dumps(manifest))

    listing = json.loads(cli("models", "--registry", str(root), "--json").stdout.strip().splitlines()[-1])
    assert listing["current"] == v1
    assert [(r["version"], r["current"]) for r in listing["versions"]] == [(v1, True), (v2, False)]
    assert listing["versions"][0]["val"]["accuracy"] > 0.5

    assert (
        "*" in [line for line in cli("models", "--registry", str(root)).stdout.splitlines() if v1 in line][0]
    )
    cli("models", "promote", v2, "--registry", str(root))
    assert (root / "models" / "CURRENT").read_text().strip() == v2
    out = cli("models", "rollback", "--registry", str(root)).stdout
    assert v1 in out and (root / "models" / "CURRENT").read_text().strip() == v1


def test_promoting_a_broken_version_is_refused(trained_registry, tmp_path):
    import shutil

    root = tmp_path / "reg"
    shutil.copytree(trained_registry, root)
    v1 = (root / "models" / "CURRENT").read_text().strip()
    shutil.copytree(root / "models" / v1, root / "models" / "v0005")
    (root / "models" / "v0005" / "ood.npz").unlink()
    proc = cli("models", "promote", "v0005", "--registry", str(root), check=False)
    assert proc.returncode == 1 and "ood.npz" in proc.stderr and "missing" in proc.stderr
    assert (root / "models" / "CURRENT").read_text().strip() == v1


def test_no_model_says_how_to_train(tmp_path):
    proc = cli(
        "evaluate",
        "--registry",
        str(tmp_path),
        "--data",
        str(ROOT / "datasets/clinc150/clinc150_full.jsonl"),
        check=False,
    )
    assert proc.returncode == 1 and "streamscore train" in proc.stderr


def test_registry_defaults_to_the_environment_then_artifacts(tmp_path):
    env_proc = subprocess.run(
        [sys.executable, "-m", "streamscore.streams.cli", "models", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "STREAMSCORE_REGISTRY": str(tmp_path / "reg")},
    )
    assert env_proc.returncode == 0, env_proc.stderr
    assert json.loads(env_proc.stdout.splitlines()[-1]) == {"current": None, "versions": []}
    proc = subprocess.run(
        [sys.executable, "-m", "streamscore.streams.cli", "train", "--data", str(tmp_path / "none.jsonl")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "STREAMSCORE_REGISTRY"},
    )
    assert proc.returncode == 2 and "none.jsonl does not exist" in proc.stderr, proc.stderr


@pytest.mark.parametrize("option", ["--repeats", "--latency-windows", "--messages", "--naive-messages"])
def test_bench_refuses_a_count_below_one(option):
    # Refused before anything starts: no model is loaded and no broker is started.
    proc = cli("bench", option, "0", "--json", check=False, timeout=60)
    assert (
        proc.returncode == 2 and f"argument {option}: '0' is not a whole number of at least 1" in proc.stderr
    )


NO_BROKER_COMMANDS = {
    "produce": ["produce", "-"],
    "tail": ["tail", "--timeout", "5"],
    "worker": ["worker"],
    "replay": ["replay", "{rows}"],
    "rescore": ["rescore", "--from-offset", "0"],
}


@pytest.mark.parametrize("command", sorted(NO_BROKER_COMMANDS))
def test_without_a_broker_a_command_says_how_to_give_one_and_sends_nothing(command, tmp_path):
    """No command but demo and broker starts a broker unasked: data sent to a throwaway broker is lost."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "1", "text": "my card was declined"}\n')
    args = [a.format(rows=rows) for a in NO_BROKER_COMMANDS[command]]
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["STREAMSCORE_REGISTRY"] = str(tmp_path / "empty-registry")
    began = time.monotonic()
    proc = cli(*args, check=False, env=env, stdin='{"text": "my card was declined"}\n', timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"streamscore {command}: error: no Kafka broker given"), proc.stderr[-2000:]
    assert "KAFKA_BOOTSTRAP_SERVERS" in lines[-1] and "--embedded" in lines[-1]
    assert "Traceback" not in proc.stderr and "started an embedded broker" not in proc.stderr
    assert time.monotonic() - began < 30, "it fails at once, before loading a model or waiting"


@pytest.mark.integration
def test_produce_to_an_embedded_broker_only_when_asked_and_says_it_keeps_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    proc = cli("produce", "-", "--embedded", env=env, stdin='{"text": "my card was declined"}\n', timeout=120)
    assert "started an embedded broker on 127.0.0.1:" in proc.stderr and "keeps nothing" in proc.stderr
    assert "sent 1 messages" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        (
            {"STREAMSCORE_SECURITY_PROTOCOL": "TLS"},
            ["tail", "--bootstrap-servers", "127.0.0.1:1"],
            "security_protocol must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, not 'TLS'",
        ),
        (
            {"STREAMSCORE_BATCH_SIZE": "abc"},
            ["worker", "--bootstrap-servers", "127.0.0.1:1"],
            "STREAMSCORE_BATCH_SIZE='abc'",
        ),
        (
            {"STREAMSCORE_TRACE_ENCODER": "maybe"},
            ["models"],
            "STREAMSCORE_TRACE_ENCODER='maybe' is not a valid switch",
        ),
        (
            {"STREAMSCORE_SESSION_TIMEOUT_S": "1"},
            ["models"],
            "session_timeout_s must be between 6 and 300 seconds",
        ),
        (
            {"STREAMSCORE_SSL_CAFILE": "/nowhere/ca.pem"},
            ["models"],
            "ssl_cafile '/nowhere/ca.pem' is not a readable file",
        ),
        ({"STREAMSCORE_KAFKA_PROPERTIES": "acks=all"}, ["models"], "'acks' is not one streamscore passes on"),
        ({"STREAMSCORE_PROCESSING_GUARANTEE": "twice"}, ["models"], "processing_guarantee must be one of"),
        ({}, ["train", "--data", "x.csv", "--field", "text"], "--field 'text': expected FIELD=COLUMN"),
        ({}, ["--log-level", "loud", "models"], "argument --log-level: invalid choice: 'loud'"),
        ({}, ["models", "--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_code_2(env, args, says, tmp_path):
    proc = cli(
        *args, check=False, env={**os.environ, "STREAMSCORE_REGISTRY": str(tmp_path), **env}, timeout=60
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_global_flags_work_after_the_command_and_a_json_error_is_json(tmp_path):
    listed = cli("models", "list", "--log-level", "debug", "--registry", str(tmp_path), timeout=60)
    assert "no models in" in listed.stdout + listed.stderr
    env = {**os.environ, "STREAMSCORE_BATCH_SIZE": "abc"}
    proc = cli(
        "rescore", "--from-offset", "0", "--bootstrap-servers", "127.0.0.1:1", "--json", check=False, env=env
    )
    assert proc.returncode == 2
    error = json.loads(proc.stdout.strip().splitlines()[-1])
    assert error == {"error": "STREAMSCORE_BATCH_SIZE='abc' is not a valid int", "command": "rescore"}


def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    assert cli("--version", timeout=60).stdout.strip() == f"streamscore {version('streamscore')}"


def test_every_command_has_examples_that_parse_and_every_flag_has_help():
    import shlex

    from streamscore.streams.cli import build_parser

    parser = build_parser()
    commands = parser.get_default("commands")
    for name, sp in commands.items():
        assert sp.epilog and sp.epilog.startswith("examples:"), name
        assert all(a.help for a in sp.flags), name
        for line in sp.epilog.splitlines()[1:]:
            words = shlex.split(line.split("| ")[-1])
            words = words[words.index("streamscore") + 1 :]
            assert parser.parse_args(words).command == name, line
    shown = cli("train", "--help", timeout=60).stdout
    assert "examples:\n  streamscore train --data" in shown and "--field FIELD=COLUMN" in shown


def test_each_command_is_one_module_that_owns_its_flags_and_its_run():
    """A command lives in one file of streams/commands/ (issue 36): its name, flags and run are
    there, every such file is listed, and streams/cli.py adds no command's flag."""
    import ast
    from importlib import import_module

    from streamscore.streams.cli import build_parser
    from streamscore.streams.commands import COMMANDS

    folder = ROOT / "streams" / "commands"
    with_command = {p.stem for p in folder.glob("*.py") if "\nCOMMAND = Command(" in p.read_text()}
    assert with_command == set(COMMANDS)
    parser = build_parser()
    for module in COMMANDS:
        command = import_module(f"streamscore.streams.commands.{module}").COMMAND
        assert command.name.replace("-", "_") == module
        assert (
            command.run.__module__ == command.options.__module__ == f"streamscore.streams.commands.{module}"
        )
        assert parser.parse_args([command.name, *REQUIRED.get(command.name, [])]).func is command.run
    cli_flags = [
        node.args[0].value
        for node in ast.walk(ast.parse((ROOT / "streams" / "cli.py").read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") == "add_argument"
        and isinstance(node.args[0], ast.Constant)
    ]
    assert sorted(cli_flags) == ["--log-level", "--log-level", "--version"]


REQUIRED = {  # what a command cannot parse without
    "train": ["--data", "x"],
    "evaluate": ["--data", "x"],
    "produce": ["-"],
    "replay": ["x"],
    "drift-eval": ["--in", "x", "--shift", "y"],
}


# ------------------------------------------------------------------ the CLI contract (issue 36)


def test_bare_streamscore_prints_help():
    proc = cli(check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: streamscore") and "COMMAND" in proc.stdout


def test_every_flag_of_every_command_says_its_default():
    """A generic check over every command: a flag with a default (its own or the setting's) says it."""
    import argparse

    from streamscore.streams.cli import build_parser
    from streamscore.streams.commands.base import SETTING_DEFAULTS

    silent = []
    for name, command in build_parser().get_default("commands").items():
        for action in command.flags:
            default = SETTING_DEFAULTS.get(action.dest) if action.default is None else action.default
            if default in (None, False, True, argparse.SUPPRESS) or isinstance(default, list):
                continue
            if "default" not in (action.help or ""):
                silent.append(f"{name} {action.option_strings[0]}")
    assert not silent, silent
    help_text = cli("train", "--help").stdout
    assert "(default: 2.0)" in help_text.replace("\n", " ").replace("  ", " ")  # --finetune-epochs


def test_a_usage_error_under_json_is_one_json_document_on_stdout():
    proc = cli("rescore", "--json", "--frm", "x", check=False)
    assert proc.returncode == 2
    (line,) = proc.stdout.splitlines()
    assert json.loads(line) == {"error": "unrecognized arguments: --frm x", "command": "rescore"}
    assert "see streamscore --help" in proc.stderr and "Traceback" not in proc.stderr


def test_a_number_below_its_floor_is_a_usage_error_before_any_work():
    proc = cli("themes", "--max-texts", "5", "--json", check=False, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    said = json.loads(proc.stdout)
    assert said["command"] == "themes" and "'5' is not a whole number of at least 10" in said["error"]


def test_a_relative_time_after_from_is_a_value_not_a_flag():
    from streamscore.streams.cli import _relative_times, build_parser

    args = build_parser().parse_args(_relative_times(["rescore", "--from", "-2h", "--to", "-15m", "--json"]))
    assert (args.from_time, args.to_time, args.json) == ("-2h", "-15m", True)


def test_a_missing_input_file_exits_2_in_one_line():
    proc = cli("produce", "nofile.jsonl", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["streamscore produce: error: no such file: nofile.jsonl"]


def test_promote_names_the_versions_there_are_and_speaks_json(trained_registry, tmp_path):
    import shutil

    root = tmp_path / "reg"
    shutil.copytree(trained_registry, root)
    proc = cli("models", "promote", "v0009", "--registry", str(root), check=False)
    assert proc.returncode == 2 and "no version 'v0009'" in proc.stderr and "(there: v0001)" in proc.stderr
    said = json.loads(cli("models", "promote", "v1", "--registry", str(root), "--json").stdout)
    assert said == {"action": "promoted", "before": "v0001", "current": "v0001"}
