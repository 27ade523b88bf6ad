"""The `flextrain` command line. Each subcommand imports its own layer lazily, so
`flextrain validate` never pays for torch and `flextrain operator` never loads it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flextrain import __version__


def _cmd_validate(args: argparse.Namespace) -> int:
    from flextrain.api.validation import validate_files

    result = validate_files(args.files, check_references=not args.skip_references)
    print(result.to_json() if args.output == "json" else result.to_text())
    return 0 if result.ok else 1


def _cmd_crds(args: argparse.Namespace) -> int:
    from flextrain.api.crdgen import chart_files, generated_files, render_reference

    wanted = {args.dir / name: text for name, text in generated_files().items()}
    # The Helm chart's copies: the same YAML inside `{{- if .Values.crds.enabled }}`.
    wanted.update({args.chart_dir / name: text for name, text in chart_files().items()})
    wanted[args.reference] = render_reference()
    # The chart's RBAC: the operator's rules (flextrain/operator/rbac.py).
    from flextrain.operator import rbac

    wanted[args.chart_dir.parent / Path(rbac.CHART_TEMPLATE).name] = rbac.chart_template()
    if args.check:
        stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
        for path in stale:
            print(f"stale: {path} differs from the typed models; run `flextrain crds`")
        return 1 if stale else 0
    for path, text in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flextrain",
        description="Train one depth-flexible network across heterogeneous devices.",
    )
    parser.add_argument("--version", action="version", version=f"flextrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate",
        help="check FlexTrainJob and DeviceTier manifests",
        description="Validate manifests against the typed API, the generated CRD schema "
        "(including its CEL rules) and each other. Exit code 0 when valid, 1 otherwise.",
    )
    p.add_argument("files", nargs="+", type=Path, help="YAML files (multi-document allowed)")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.add_argument(
        "--skip-references",
        action="store_true",
        help="do not require referenced DeviceTiers to be in the given files "
        "(they already exist in the cluster)",
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "crds",
        help="write the CustomResourceDefinitions and the files generated with them",
        description=(
            "Generate crds/*.yaml and the Helm chart's CRD templates from flextrain.api, "
            "docs/api.md, and the chart's RBAC (templates/_rbac.tpl) from "
            "flextrain/operator/rbac.py (never edit them by hand)."
        ),
    )
    p.add_argument(
        "--dir", type=Path, default=Path("crds"), help="output directory (default: crds)"
    )
    p.add_argument(
        "--chart-dir",
        type=Path,
        default=Path("charts/flextrain/templates/crds"),
        help="where the Helm chart's CRD templates go (default: charts/flextrain/templates/crds)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        default=Path("docs/api.md"),
        help="API reference page to write (default: docs/api.md)",
    )
    p.add_argument("--check", action="store_true", help="exit 1 when the files are stale")
    p.set_defaults(func=_cmd_crds)

    from flextrain.aggregator import main as aggregator_main
    from flextrain.local import main as run_main
    from flextrain.trainer import main as trainer_main

    p = sub.add_parser(
        "run",
        help="run a FlexTrainJob on this machine (aggregator + trainers on loopback)",
        description=(
            "Run the job with the same processes a cluster runs, show progress, and write "
            "report.md, an accuracy plot, the checkpoint and one sub-model per tier."
        ),
    )
    run_main.add_arguments(p)
    p.set_defaults(func=run_main.run)

    p = sub.add_parser(
        "aggregator",
        help="run a job's gRPC aggregator",
        description=(aggregator_main.__doc__ or "").split("\n\n")[0],
    )
    aggregator_main.add_arguments(p)
    p.set_defaults(func=aggregator_main.run)

    from flextrain.operator import main as operator_main

    p = sub.add_parser(
        "operator",
        help="run the Kubernetes operator (kopf) for FlexTrainJobs and DeviceTiers",
        description=(operator_main.__doc__ or "").split("\n\n")[0],
    )
    operator_main.add_arguments(p)
    p.set_defaults(func=operator_main.run)

    p = sub.add_parser(
        "trainer",
        help="run one trainer (configured by FLEXTRAIN_* environment variables)",
        description="One device's trainer; see flextrain/trainer/config.py for the environment.",
    )
    trainer_main.add_arguments(p)
    p.set_defaults(func=trainer_main.run)
    return parser


#: Top-level modules of each optional part (pyproject.toml's extras).
EXTRAS = {
    "trainer": ("torch", "numpy", "sklearn", "safetensors", "matplotlib"),
    "operator": ("kopf", "aiohttp"),
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        extra = next((e for e, modules in EXTRAS.items() if top in modules), None)
        if extra is None:
            raise
        print(
            f"flextrain: this command needs {top}, which comes with the `{extra}` extra: "
            f"pip install 'flextrain[{extra}]' (or 'flextrain[all]')",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
