"""``convirt zeroshot``: per-finding probabilities, explanations and AUROC on a labelled split."""

from __future__ import annotations

import argparse

from convirt.cli.common import (
    add_checkpoint_arguments,
    add_input_arguments,
    eval_batches,
    fmt_value,
    model_from_args,
    with_ci,
)
from convirt.zeroshot.operating_points import RULES, parse_rule


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
    from convirt.models.fingerprint import model_fingerprint
    from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors
    from convirt.zeroshot.calibration import Calibration, scores_from
    from convirt.zeroshot.calibration_report import format_calibration
    from convirt.zeroshot.evaluate import METRICS, aligned_labels, evaluate_zeroshot, save_zeroshot_folder
    from convirt.zeroshot.plots import plot_explained_batch
    from convirt.zeroshot.validated import save_validated, validate_or_skip

    for rule in args.operating_points:  # a bad rule or calibration file fails before any embedding
        parse_rule(rule)
    given = Calibration.load(args.calibration) if args.calibration else None
    descriptors = load_descriptors(args.descriptors)
    if args.labels:  # only the named labels are scored
        descriptors = descriptors.only(args.labels)
    loaded = model_from_args(args)
    loaded.require_text("zero-shot diagnosis")
    made_by = scores_from(model_fingerprint(loaded), descriptors.name)
    if given is not None:  # another model's or descriptor set's calibration fails before any embedding
        given.check_scores_from(made_by, descriptors.name)
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
    probs = evaluation.outputs[Method.DESCRIPTORS].probabilities.numpy()
    names = evaluation.outputs[Method.DESCRIPTORS].finding_names
    patients = [str(m.get("patient_id") or key) for m, key in zip(embedded.meta, embedded.keys)]
    calibrated = validate_or_skip(
        *(evaluation.labels, probs, names, evaluation.keys, patients, given, args.calibration_method),
        *(args.validation_fraction, args.seed, args.bootstrap, args.operating_points, made_by),
    )
    if isinstance(calibrated, str):
        evaluation.metrics["calibration"] = {"skipped": calibrated}
    out = save_zeroshot_folder(evaluation, args.output)
    if not isinstance(calibrated, str):
        calibration = save_validated(calibrated, evaluation.labels, probs, names, evaluation.keys, out)
        evaluation.metrics["calibration"] = calibration
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
    if isinstance(calibrated, str):
        print(f"no calibration: {calibrated}")
    else:
        print("\n" + format_calibration(evaluation.metrics["calibration"]))
