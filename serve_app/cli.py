"""`gsv-serve`: start the server on an embedded local Ray, or build the demo model.

    gsv-serve serve [--config configs/cpu.yaml] [--host 127.0.0.1] [--port 8000] [--data-dir ./data]
                    [--gpt X.ckpt --sovits Y.pth --hubert-dir DIR --bert-dir DIR]
    gsv-serve config [same flags]      print the resolved Serve config (for `serve deploy`)
    gsv-serve demo-assets DIR          write the demo model files
    gsv-serve create-key --tenant T [--admin] [--data-dir D]   an API key (shown once, stored hashed)

`serve` applies the Serve config exactly as `serve run CONFIG` would (every deployment's resources,
autoscaling and user_config), after filling in the command-line overrides.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from serve_app.auth import KeyStore, binds_beyond_loopback

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"
log = logging.getLogger("gsv.cli")


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    config = yaml.safe_load(Path(args.config).read_text("utf-8"))
    http = config.setdefault("http_options", {})
    if args.host:
        http["host"] = args.host
    if args.port:
        http["port"] = args.port
    app_args = config["applications"][0].setdefault("args", {})
    model = app_args.setdefault("model", {})
    for key in ("gpt", "sovits", "hubert_dir", "bert_dir"):
        value = getattr(args, key)
        if value:
            model[key] = str(Path(value).expanduser().resolve())
    if args.device:
        app_args["device"] = args.device
    data_dir = args.data_dir or os.environ.get("GSV_DATA_DIR") or app_args.get("data_dir", "./data")
    app_args["data_dir"] = str(Path(data_dir).expanduser().resolve())
    if binds_beyond_loopback(http.get("host", "127.0.0.1")):
        app_args["require_auth"] = True  # never serve voices unauthenticated beyond this machine
    return config


def deploy_local(config: dict[str, Any], num_cpus: float | None = None, timeout_s: float = 300,
                 env_vars: dict[str, str] | None = None, log_to_driver: bool = True) -> str:
    """Start an embedded local Ray (if none is running) and apply a Serve config exactly as
    `serve run CONFIG` would; wait until the application is RUNNING; return its base URL.
    Shared by `gsv-serve serve`, the integration tests and the benchmarks."""
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    http = config.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    if not ray.is_initialized():
        local = host in ("127.0.0.1", "localhost")
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=log_to_driver,
                 _node_ip_address="127.0.0.1" if local else None,
                 runtime_env={"env_vars": env_vars} if env_vars else None)
    client = serve_api.serve_start(http_options=http, proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    name = config["applications"][0]["name"]
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            break
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploy failed: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"application {name!r} not RUNNING after {timeout_s:.0f} s")
        time.sleep(0.5)
    return f"http://{host}:{http.get('port', 8000)}"


def prepare_models(config: dict[str, Any]) -> None:
    """Build the demo model (if no checkpoints are configured) and register the configured model
    before Ray starts, with progress on this terminal; the app builder then finds them ready."""
    from serve_app.model_files import ensure_demo_voice, register_declared_model, resolve_model_paths
    from serve_app.settings import Settings

    settings = Settings.from_args(config["applications"][0].get("args"))
    register_declared_model(settings, resolve_model_paths(settings))
    ensure_demo_voice(settings)
    if settings.model.is_demo:
        print("gsv-serve: no checkpoints configured: serving the built-in DEMO model "
              "(random weights, it speaks noise). Pass --gpt/--sovits/--hubert-dir/--bert-dir for a real voice.")


def serve_forever(config: dict[str, Any], num_cpus: float | None) -> None:
    from ray import serve

    prepare_models(config)
    print(f"gsv-serve: deploying {config['applications'][0]['name']!r} on a local Ray ...", flush=True)
    started = time.monotonic()
    # logical CPUs for the embedded Ray: at least 4, so the CPU profile's autoscaled replicas fit on
    # a 2-core laptop too (each replica's torch threads are set explicitly; Ray's count is a budget)
    num_cpus = num_cpus or max(4, os.cpu_count() or 1)
    try:
        url = deploy_local(config, num_cpus)
    except (RuntimeError, TimeoutError) as exc:
        print(f"gsv-serve: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"gsv-serve: ready in {time.monotonic() - started:.1f} s at {url}  (playground: {url}/, API docs: {url}/docs)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gsv-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "config"):
        p = sub.add_parser(name)
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML (default: configs/cpu.yaml)")
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=None)
        p.add_argument("--data-dir", default=None, help="voices and the demo model (default ./data)")
        p.add_argument("--gpt", default=None, help="upstream GPT .ckpt")
        p.add_argument("--sovits", default=None, help="upstream SoVITS .pth")
        p.add_argument("--hubert-dir", default=None, help="chinese-hubert-base folder")
        p.add_argument("--bert-dir", default=None, help="chinese-roberta-wwm-ext-large folder")
        p.add_argument("--device", default=None, help="cpu or cuda")
        if name == "serve":
            p.add_argument("--num-cpus", type=float, default=None, help="logical CPUs for the local Ray")
    demo = sub.add_parser("demo-assets")
    demo.add_argument("dest")
    keys = sub.add_parser("create-key", help="create an API key for a tenant (printed once; stored hashed)")
    keys.add_argument("--tenant", required=True)
    keys.add_argument("--admin", action="store_true", help="may swap models and see every tenant")
    keys.add_argument("--data-dir", default=os.environ.get("GSV_DATA_DIR", "./data"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    if args.command == "create-key":
        key, record = KeyStore(Path(args.data_dir).expanduser().resolve()).create(args.tenant, args.admin)
        print(f"tenant {record.tenant} ({'admin' if record.admin else 'user'}), key id {record.key_id}:\n{key}")
    elif args.command == "demo-assets":
        from models.demo import build_demo_assets

        for key, value in build_demo_assets(Path(args.dest)).items():
            print(f"{key}: {value}")
    elif args.command == "config":
        print(yaml.safe_dump(load_config(args), sort_keys=False, allow_unicode=True))
    else:
        serve_forever(load_config(args), args.num_cpus)


if __name__ == "__main__":
    main()
