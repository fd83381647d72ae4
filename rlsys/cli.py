"""``rlsys`` command line: train, sft, eval, demos, report, serve, import, presets.

Every subcommand takes ``--preset NAME`` and ``--set dotted.key=value`` overrides where it uses
the config; the config is validated before anything starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import yaml

from rlsys.config import ConfigError, list_presets, load_config, preset_description, to_dict


def _config_args(p: argparse.ArgumentParser, default_preset: str | None) -> None:
    p.add_argument("--preset", default=default_preset,
                   help=f"named preset from rlsys/presets (default: {default_preset}); see `rlsys presets`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable, e.g. --set optim.actor_lr=3e-4 --set env.num_envs=4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def _load(args: argparse.Namespace) -> Any:
    cfg = load_config(args.preset, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg


def cmd_presets(args: argparse.Namespace) -> None:
    names = list_presets()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {preset_description(name)}")


def cmd_demos(args: argparse.Namespace) -> None:
    from rlsys.envs.demos import expert_demos

    if args.env:  # before the other overrides are checked: env.tasks names that env's tasks
        args.overrides = [f"env.name={args.env}", *args.overrides]
    cfg = _load(args)
    report = expert_demos(cfg.env, args.out, args.episodes, workers=args.workers)
    print(json.dumps(report, indent=2))
    print(f"demos: wrote {sum(r['kept'] for r in report.values())} episodes to {args.out} (LeRobotDataset v3.0)")


def cmd_sft(args: argparse.Namespace) -> None:
    from rlsys.sft import run_sft

    if args.resume:
        from rlsys.sft import resume_sft

        resume_sft(args.resume)
        return
    cfg = _load(args)
    if not args.out:
        raise SystemExit("rlsys sft: --out DIR is required (or --resume DIR to continue an interrupted SFT)")
    run_sft(cfg, out_dir=args.out, demos=args.demos)


def cmd_import(args: argparse.Namespace) -> None:
    from rlsys.pretrained import import_pretrained

    import_pretrained(_load(args), args.out, demos=args.demos)


def cmd_eval(args: argparse.Namespace) -> None:
    from rlsys.evaluation import run_eval_command

    cfg = _load(args)
    res = run_eval_command(cfg, ckpt=args.ckpt, out_dir=args.out, episodes=args.episodes, tasks=args.tasks,
                           env=args.env, init_state_offset=args.init_state_offset, workers=args.workers,
                           sampler=args.sampler, device=args.device)
    print(f"eval: results in {res['out_dir']} (eval.json, eval.md, videos/)")


def cmd_train(args: argparse.Namespace) -> None:
    from rlsys.train import train

    if args.resume:  # the run's saved config; --set may change only how long and how often (RESUME_SETTABLE)
        train(None, resume=args.resume, resume_overrides=args.overrides)
        return
    train(_load(args))


def cmd_serve(args: argparse.Namespace) -> None:
    import time

    from rlsys.checkpoint import read_config
    from rlsys.deploy.serve import start

    read_config(args.ckpt)  # a clear error for a bad path before Ray starts
    from rlsys.deploy.openpi import OpenPIKeys

    try:
        keys = OpenPIKeys.from_json(args.openpi_keys) if args.openpi_keys else OpenPIKeys()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--openpi-keys: {e}") from None
    start(args.ckpt, host=args.host, port=args.port, openpi_keys=keys)
    print(f"serving {args.ckpt} on http://{args.host}:{args.port} (/spec, /act, /ws; openpi clients: "
          f"ws://{args.host}:{args.port}); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def cmd_assets(args: argparse.Namespace) -> None:
    if args.suite == "robotwin":
        from rlsys.envs import robotwin_assets as ra

        if args.source or args.download or args.stand_ins:
            raise SystemExit("rlsys assets robotwin: only checks a folder (--dir); get the full set from "
                             f"{ra.UPSTREAM_URL}")
        result = ra.check(args.dir)
        print("\n".join(ra.report_lines(result)))
        if not result["runnable_tasks"]:
            sys.exit(1)
        return
    from rlsys.envs import simpler_assets as sa

    if args.source or args.download:
        sa.stage(args.dir, None if args.download else args.source)
    if args.stand_ins:
        made = sa.make_stand_ins(args.dir)
        print(f"stand-ins (labelled in {sa.STAND_INS_FILE}; results on them are not SimplerEnv numbers):")
        for path, what in made.items():
            print(f"  {path}: {what}")
    result = sa.check(args.dir)
    print("\n".join(sa.report_lines(result)))
    if result["status"] == "incomplete":
        sys.exit(1)


def cmd_report(args: argparse.Namespace) -> None:
    from rlsys.report import make_report

    png, page = make_report(args.run_dir)
    print(f"wrote {png} and {page}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlsys", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], None], str]] = {
        "train": (cmd_train, "RL post-training (PPO / GRPO) on Ray: SFT start -> rollouts -> updates"),
        "sft": (cmd_sft, "supervised flow-matching training from demos; writes a checkpoint"),
        "eval": (cmd_eval, "evaluate a checkpoint (deterministic ODE sampling unless --sampler rollout)"),
        "demos": (cmd_demos, "write scripted-expert demonstrations (LeRobotDataset v3.0)"),
        "report": (cmd_report, "plot a run directory: report.png + self-contained report.html"),
        "serve": (cmd_serve, "serve a checkpoint with Ray Serve: HTTP JSON /act, websocket /ws"),
        "import": (cmd_import, "a local pretrained pi0 / pi0.5 folder -> an rlsys checkpoint (reports missing "
                               "and unexpected keys)"),
        "presets": (cmd_presets, "list the named config presets"),
        "assets": (cmd_assets, "stage / check simulator assets (SimplerEnv, RoboTwin) against official fingerprints"),
    }
    ps = {name: sub.add_parser(name, help=h, description=h) for name, (_, h) in commands.items()}
    for name, p in ps.items():
        p.set_defaults(func=commands[name][0])
    _config_args(ps["train"], "tabletop_quickstart")
    ps["train"].add_argument("--resume", metavar="RUN_DIR",
                             help="continue a run from its last checkpoint with its saved config (--set may "
                                  "change iterations, max_minutes, eval_every, eval_episodes, checkpoint_every, "
                                  "checkpoint_keep: e.g. --set iterations=200 to train a finished run longer)")
    _config_args(ps["sft"], "tabletop_sft")
    ps["sft"].add_argument("--demos", help="demo folder (default: sft.demos, else generate expert demos)")
    ps["sft"].add_argument("--out", help="checkpoint folder to write (checkpoints on the way: OUT.partial)")
    ps["sft"].add_argument("--resume", metavar="OUT", help="continue an interrupted SFT (OUT.partial) with its config")
    _config_args(ps["eval"], "tabletop_sft")
    ps["eval"].add_argument("--ckpt", required=True, help="checkpoint folder (safetensors + JSON)")
    ps["eval"].add_argument("--env", help="env name (default: the checkpoint's env)")
    ps["eval"].add_argument("--tasks", nargs="*", help="subset of task names (LIBERO: names or indices)")
    ps["eval"].add_argument("--episodes", "--trials", type=int, default=50,
                            help="episodes per task (default 50; LIBERO: init states 0..N-1)")
    ps["eval"].add_argument("--init-state-offset", type=int, default=0,
                            help="LIBERO: first init state (e.g. 25 to hold out the states demos used)")
    ps["eval"].add_argument("--sampler", choices=("ode", "rollout"), default="ode",
                            help="ode: deterministic (the protocol); rollout: the config's stochastic sampler "
                                 "(sampler.name / sampler.noise_level), the policy RL trains")
    ps["eval"].add_argument("--out", help="folder for the result table (JSON + markdown) and videos")
    ps["eval"].add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                            help="where the policy runs without --workers (auto: CUDA where torch sees one)")
    ps["eval"].add_argument("--workers", type=int, default=0,
                            help="shard episodes over this many Ray tasks (each an env pool + policy copy); "
                                 "0 = one local env pool")
    _config_args(ps["import"], None)
    ps["import"].add_argument("--out", required=True, help="checkpoint folder to write")
    ps["import"].add_argument("--demos", help="demo folder for the normalisation statistics when the pretrained "
                                              "folder has no norm_stats.json")
    ps["report"].add_argument("run_dir", help="a run directory written by `rlsys train`")
    ps["serve"].add_argument("ckpt", help="checkpoint folder (safetensors + JSON)")
    ps["serve"].add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ps["serve"].add_argument("--port", type=int, default=8000)
    ps["serve"].add_argument("--openpi-keys", metavar="JSON",
                             help='openpi clients (websocket at /): which observation keys are which, e.g. '
                                  '\'{"images": ["observation/image", "observation/wrist_image"], '
                                  '"state": "observation/state", "prompt": "prompt"}\' (the default)')
    _config_args(ps["demos"], None)
    ps["demos"].add_argument("--env", help="env name (default: env.name of the config)")
    ps["demos"].add_argument("--episodes", type=int, required=True, help="successful episodes per task")
    ps["demos"].add_argument("--out", required=True, help="new folder to write the dataset into")
    ps["demos"].add_argument("--workers", type=int, default=1,
                             help="expert processes collecting at once (one simulator each; seeds interleaved)")
    ps["assets"].add_argument("suite", choices=["simpler", "robotwin"], help="which simulator's assets")
    ps["assets"].add_argument("--dir", required=True,
                              help="the asset folder (SimplerEnv: becomes MS_ASSET_DIR; RoboTwin: the asset root)")
    ps["assets"].add_argument("--from", dest="source", help="link the files of an offline folder into --dir")
    ps["assets"].add_argument("--download", action="store_true", help="use ManiSkill's downloader (internet)")
    ps["assets"].add_argument("--stand-ins", action="store_true",
                              help="build labelled stand-ins for the files the offline set lacks")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from rlsys.checkpoint import CheckpointError
    from rlsys.types import ContractError

    try:
        args.func(args)
    except ConfigError as e:
        print(f"rlsys {args.command}: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (CheckpointError, ContractError, FileNotFoundError, FileExistsError) as e:
        print(f"rlsys {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # python -m rlsys.cli (python -m rlsys is the same)
    main()
