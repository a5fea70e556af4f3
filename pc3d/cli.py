"""pc3d <command> key=value ... — the Hydra command line, a thin dispatcher.

Commands:
    pretrain   self-supervised pretraining (configs/pretrain.yaml)
    probe      frozen-feature probe + random-init baseline (configs/probe.yaml; probe=object_svm|scene_linear|scene_knn)
    finetune   fine-tune encoder + Point-MAE head, optional voting (configs/finetune.yaml)
    fewshot    N-way K-shot classification over seeded folds (configs/fewshot.yaml)
    detect train|eval   3D detection head + mAP@0.25/0.5 (configs/detect.yaml)
    viz features|recon|grid  pictures: encoder features over a scene; Point-MAE, NeRF-MAE reconstructions
    export     a checkpoint's encoder as one .safetensors file (configs/export.yaml)
    prep NAME  dataset preparation, e.g. pc3d prep modelnet src=DIR dst=DIR (configs/prep/NAME.yaml)

Every run writes the resolved config.yaml and a flat metrics.json to out_dir (metric keys:
README, "The command line"). Bad input (unknown keys, missing data, corrupt files) ends with
one line on stderr and exit status 2. `pc3d <command> --help` lists the command's config groups
and keys (after any overrides given before it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from pc3d.errors import ConfigError, Pc3dError

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
USAGE = __doc__.split("Every run")[0].strip() + "\n\nHelp on one command: pc3d <command> --help"
HELP_FLAGS = ("-h", "--help")

#: command → (config name, what runs the composed config: "module:function", or "@key" for the
#: function the config names under ``key`` — probes and preps are picked by config)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("pretrain", "pc3d.train.pretrain:run_pretrain"),
    "probe": ("probe", "@probe.run"),
    "finetune": ("finetune", "pc3d.eval.finetune:run_finetune"),
    "fewshot": ("fewshot", "pc3d.eval.fewshot:run_fewshot"),
    "export": ("export", "pc3d.hub.export:run_export"),
}
#: commands whose first word is a mode → (their modes, the "module:function" called with ``(mode, cfg)``)
MODE_COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "detect": (("train", "eval"), "pc3d.eval.detect:run_detect"),
    "viz": (("features", "recon", "grid"), "pc3d.eval.viz:run_viz"),
}


def config_dir() -> Path:
    """``$PC3D_CONFIG_DIR`` or the repository's ``configs/``."""
    path = Path(os.environ.get("PC3D_CONFIG_DIR", REPO_CONFIGS))
    if not (path / "pretrain.yaml").is_file():
        raise ConfigError(f"config directory {path} not found (install pc3d with `pip install -e .` from the "
                          "repository, or set PC3D_CONFIG_DIR)")
    return path


def prep_names() -> list[str]:
    """The datasets ``pc3d prep`` knows: one ``configs/prep/<name>.yaml`` each."""
    return sorted(p.stem for p in (config_dir() / "prep").glob("*.yaml"))


def _quote_non_ascii(override: str) -> str:
    """``key=/data/modèles`` → ``key='/data/modèles'``: Hydra's override grammar reads non-ASCII characters
    (and names that are not UTF-8) only inside quotes, so a plain value holding them is quoted for it; a value
    already quoted, a list or a mapping, or one holding quotes, commas or backslashes is left as typed."""
    key, sep, value = override.partition("=")
    if not sep or value.isascii() or value[:1] in "'\"[{" or any(c in value for c in "'\",\\"):
        return override
    return f"{key}='{value}'"


def _hydra_compose(name: str, overrides: Sequence[str], with_choices: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=[_quote_non_ascii(o) for o in overrides],
                             return_hydra_config=with_choices)


def compose(name: str, overrides: Sequence[str]):
    """The composed config ``name`` with command-line ``overrides``, struct mode on."""
    from omegaconf import OmegaConf

    cfg = _hydra_compose(name, overrides)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(f'{k}=...' for k in missing)}")
    OmegaConf.set_struct(cfg, True)
    return cfg


def command_help(command: str, overrides: Sequence[str]) -> str:
    """Plain-text help of one command: its line of the usage, its config groups (chosen option and the
    others in ``configs/<group>/``) and its keys with their values, ``???`` marking the required ones."""
    from omegaconf import OmegaConf, open_dict

    def summary() -> str:  # the command's line of the usage
        return next(line.strip() for line in USAGE.splitlines() if line.split()[:1] == [command])

    if command == "prep" and (not overrides or "=" in overrides[0]):
        return f"{summary()}\n\nusage: pc3d prep NAME key=value ...   (pc3d prep NAME --help for its keys)\n" \
               f"NAME: {', '.join(prep_names())}"
    name, lead, overrides = _command_config(command, overrides, mode_optional=True)
    cfg = _hydra_compose(name, overrides, with_choices=True)
    choices = {g: c for g, c in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
               if not g.startswith("hydra/")}
    with open_dict(cfg):
        del cfg["hydra"]
    modes = ["|".join(MODE_COMMANDS[command][0])] if command in MODE_COMMANDS else []
    usage = " ".join(["pc3d", command, *(lead or modes),
                      *(["[group=option ...]"] if choices else []), "[key=value ...]"])
    lines = [summary(), "", f"usage: {usage}", ""]
    if choices:
        lines.append("config groups (group: chosen option; others):")
        for group, chosen in sorted(choices.items()):
            others = sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if p.stem != chosen)
            listed = f"   ({', '.join(others)})" if others else ""
            lines.append(f"  {group}: {'null' if chosen is None else chosen}{listed}")
        lines.append("")
    lines.append("keys (??? = required):")
    lines += ["  " + line for line in OmegaConf.to_yaml(cfg, resolve=False).rstrip().splitlines()]
    return "\n".join(lines)


def _run(runner: str, cfg) -> Any:
    """Call ``runner`` ("module:function" or "@key": the function named at config ``key``) with ``cfg``."""
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    where = runner
    if runner.startswith("@"):
        where = f"{runner[1:]}={OmegaConf.select(cfg, runner[1:])}"
        runner = str(OmegaConf.select(cfg, runner[1:]))
    try:
        function = get_object(runner.replace(":", "."))
    except Exception as exc:
        raise ConfigError(f"{where}: cannot be imported ({exc})") from exc
    return function(cfg)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _command_config(command: str, args: Sequence[str], mode_optional: bool = False) -> tuple[str, list[str], list[str]]:
    """``(config name, leading words, overrides)`` of a command line, the one check of its shape: prep's
    dataset and a mode command's mode come before the overrides (``mode_optional``: its help may omit it)."""
    if command == "prep":
        names = prep_names()
        if not args or "=" in args[0]:
            raise ConfigError(f"usage: pc3d prep NAME key=value ... (NAME: {', '.join(names)})")
        if args[0] not in names:
            raise ConfigError(f"unknown dataset for prep: {args[0]!r} (available: {', '.join(names)})")
        return f"prep/{args[0]}", [args[0]], list(args[1:])
    if command in MODE_COMMANDS:
        modes = MODE_COMMANDS[command][0]
        if mode_optional and (not args or "=" in args[0]):
            return command, [], list(args)
        if not args or args[0] not in modes:
            raise ConfigError(f"usage: pc3d {command} {'|'.join(modes)} key=value ...")
        return command, [args[0]], list(args[1:])
    if command in COMMANDS:
        return COMMANDS[command][0], [], list(args)
    raise ConfigError(f"unknown command {command!r} (commands: {', '.join([*COMMANDS, *MODE_COMMANDS, 'prep'])})")


def _dispatch(command: str, args: list[str]) -> None:
    name, lead, overrides = _command_config(command, args)
    if command == "prep":
        _run("@run", compose(name, overrides))
    elif command in MODE_COMMANDS:
        from hydra.utils import get_object

        get_object(MODE_COMMANDS[command][1].replace(":", "."))(lead[0], compose(name, overrides))
    else:
        _run(COMMANDS[command][1], compose(name, overrides))


def main(argv: Sequence[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in (*HELP_FLAGS, "help"):
        print(USAGE)
        return 0
    from pc3d.train.distributed import shutdown_distributed
    from pc3d.train.rundir import release_run_dir

    try:
        if any(arg in HELP_FLAGS for arg in args[1:]):  # before Hydra, which reads "--help" as an override
            print(command_help(args[0], [arg for arg in args[1:] if arg not in HELP_FLAGS]))
        else:
            _dispatch(args[0], args[1:])
    except Pc3dError as exc:
        print(f"pc3d: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"pc3d: config error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a fault of the machine (disk, permissions) that no reader or writer named itself
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pc3d: error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pc3d: interrupted", file=sys.stderr)
        return 130
    finally:
        release_run_dir()
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
