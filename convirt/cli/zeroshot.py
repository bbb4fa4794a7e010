"""``convirt zeroshot``: per-finding probabilities, explanations and AUROC on a labelled split."""

from __future__ import annotations

import argparse
from typing import Any

from convirt.cli.common import (
    add_checkpoint_arguments,
    add_input_arguments,
    eval_batches,
    fmt_value,
    model_from_args,
    with_ci,
)
from convirt.zeroshot.operating_points import RULES


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("zeroshot", help="zero-shot diagnosis with descriptor prompts, scored on labels")
    add_checkpoint_arguments(parser)
    parser.add_argument("--descriptors", default="phantom", help="shipped set name or YAML path")
    add_input_arguments(parser)
    parser.add_argument(
        "--labels",
        nargs="+",
        metavar="NAME",
        help="the label names to score (default: every label in the data); each must be a descriptor finding, "
        "and only these findings of the set are scored",
    )
    parser.add_argument(
        "--threshold-split",
        help="shard split whose Youden's J picks the F1/sensitivity/specificity "
        "threshold (default: Youden's J on the evaluated data itself)",
    )
    parser.add_argument(
        "--calibration",
        metavar="FILE",
        help="a calibration.json of an earlier run (its operating points with it), applied to these images; "
        "refused if it was fitted on any of them (default: fit one on a patient-grouped validation fold of "
        "these images and report on the other patients)",
    )
    parser.add_argument(
        "--calibration-method", choices=("temperature", "platt"), default="temperature", help="how to calibrate"
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.3,
        help="share of the patients the calibration and operating points are fitted on (default 0.3)",
    )
    parser.add_argument(
        "--operating-points",
        nargs="+",
        metavar="RULE",
        default=list(RULES),
        help="rules that choose thresholds on the validation fold: youden, sensitivity>=X, specificity>=X "
        "(default: %(default)s)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the 95%% CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--figures",
        type=int,
        default=0,
        metavar="N",
        help="also draw, for the first N images, the observation bar chart and the Grad-CAM map "
        "of each finding (figures/KEY.png)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="folder for predictions.csv, explanations.jsonl, metrics.json, roc.png, calibration.json, reliability/",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from convirt._io import write_json
    from convirt.data.inputs import parse_where
    from convirt.embeddings import embed_batches
    from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors
    from convirt.zeroshot.evaluate import METRICS, aligned_labels, evaluate_zeroshot, save_zeroshot_folder
    from convirt.zeroshot.plots import plot_explained_batch
    from convirt.zeroshot.validated import save_validated

    descriptors = load_descriptors(args.descriptors)
    if args.labels:  # only the named labels are scored
        descriptors = descriptors.only(args.labels)
    loaded = model_from_args(args)
    loaded.require_text("zero-shot diagnosis")
    where = parse_where(args.where)
    embedded = embed_batches(
        loaded.model, eval_batches(loaded, args.data, args.split, args.batch_size, where=where, table=args)
    )
    aligned_labels(embedded.meta, descriptors.finding_names, args.labels)  # a mismatch fails before more work
    tuning = (
        embed_batches(
            loaded.model,
            eval_batches(loaded, args.data, args.threshold_split, args.batch_size, where=where, table=args),
            progress=False,
        )
        if args.threshold_split
        else None
    )
    about = {"data": args.data, "split": args.split, "where": where, "model": str(args.model)}
    evaluation = evaluate_zeroshot(
        loaded.model,
        loaded.tokenizer,
        descriptors,
        embedded,
        args.labels,
        tuning,
        f"youden on split {args.threshold_split}",
        args.bootstrap,
        args.seed,
        about,
    )
    calibrated = _calibrate(args, evaluation, embedded)
    out = save_zeroshot_folder(evaluation, args.output)
    if calibrated is not None:
        probs = evaluation.outputs[Method.DESCRIPTORS].probabilities.numpy()
        names = evaluation.outputs[Method.DESCRIPTORS].finding_names
        evaluation.metrics["calibration"] = save_validated(
            calibrated, evaluation.labels, probs, names, evaluation.keys, out
        )
        write_json(out / METRICS, evaluation.metrics)
    if args.figures > 0:
        batch = next(iter(eval_batches(loaded, args.data, args.split, args.figures, where=where, table=args)))
        plot_explained_batch(batch, ZeroShotClassifier(loaded.model, loaded.tokenizer, descriptors), out / "figures")
    metrics, labels, names = evaluation.metrics, evaluation.labels, descriptors.finding_names
    methods = [method.value for method in Method]
    print(f"AUROC [95% CI], {len(labels)} images")
    print(f"{'finding':<20} {'positives':>9} " + " ".join(f"{m:>22}" for m in methods))
    for i, name in enumerate(names):
        cells = " ".join(f"{with_ci(metrics[m]['findings'][name], 'auroc'):>22}" for m in methods)
        print(f"{name:<20} {(labels[:, i] == 1).sum():>9} {cells}")
    print(f"{'mean AUROC':<20} {'':>9} " + " ".join(f"{fmt_value(metrics[m]['mean_auroc']):>22}" for m in methods))
    if calibrated is not None:
        _print_calibration(evaluation.metrics["calibration"])
    else:
        print(f"no calibration: {evaluation.metrics['calibration']['skipped']}")


def _calibrate(args: argparse.Namespace, evaluation: Any, embedded: Any) -> Any:
    """The calibration and operating points of this run (fitted on a validation fold of these
    images, or ``--calibration``), reported where not fitted; None, with the reason in the metrics,
    where these images cannot give a validation fold (one patient, a finding with one class)."""
    from convirt.zeroshot import Method
    from convirt.zeroshot.calibration import Calibration, FittedRowsError
    from convirt.zeroshot.operating_points import parse_rule
    from convirt.zeroshot.validated import validate

    for rule in args.operating_points:
        parse_rule(rule)
    if not 0 < args.validation_fraction < 1:
        raise ValueError(f"--validation-fraction {args.validation_fraction} is not between 0 and 1")
    given = Calibration.load(args.calibration) if args.calibration else None
    descriptor = evaluation.outputs[Method.DESCRIPTORS]
    patients = [str(m.get("patient_id") or key) for m, key in zip(embedded.meta, embedded.keys)]
    try:
        return validate(
            evaluation.labels,
            descriptor.probabilities.numpy(),
            descriptor.finding_names,
            evaluation.keys,
            patients,
            given,
            args.calibration_method,
            args.validation_fraction,
            args.seed,
            args.bootstrap,
            args.operating_points,
        )
    except ValueError as error:
        if given is not None or isinstance(error, FittedRowsError):
            raise  # reported on fitted images, or a file not for these findings: never skipped
        evaluation.metrics["calibration"] = {"skipped": str(error)}
        return None


def _print_calibration(found: dict[str, Any]) -> None:
    where = "the other patients" if found["fitted_here"] else "every image (none fitted on)"
    fitted = found["fitted_on"]
    print(
        f"\ncalibration ({found['method']}, fitted on {fitted['n']} images of fold {fitted['fingerprint'][:12]}),"
        f" reported on {found['reported_on']} images, {where}; ECE: {found['binning']}"
    )
    print(f"{'finding':<20} {'ECE before':>22} {'ECE after':>22} {'Brier before':>22} {'Brier after':>22}")
    for name, finding in found["findings"].items():
        cells = [
            _cell(finding[measure][when], finding[f"{measure}_ci"][when])
            for measure in ("ece", "brier")
            for when in ("before", "after")
        ]
        print(f"{name:<20} " + " ".join(f"{c:>22}" for c in cells))
    print("\noperating points chosen on the validation fold, reported here [95% CI]")
    print(
        f"{'finding':<20} {'rule':<18} {'threshold':>9} {'sensitivity':>22} {'specificity':>22} {'PPV':>22} {'NPV':>22}"
    )
    for name, finding in found["findings"].items():
        for rule, point in finding["operating_points"].items():
            cells = [_cell(point[rate], point[f"{rate}_ci"]) for rate in ("sensitivity", "specificity", "ppv", "npv")]
            print(f"{name:<20} {rule:<18} {point['threshold']:>9.3f} " + " ".join(f"{c:>22}" for c in cells))
    if found["not_fitted"] or found["uncalibrated"]:
        print("not calibrated: " + ", ".join([*found["not_fitted"], *found["uncalibrated"]]))


def _cell(value: float, ci: Any) -> str:
    return with_ci({"v": value, "v_ci": list(ci)}, "v")
