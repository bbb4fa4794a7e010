"""``convirt zeroshot``: per-finding probabilities, explanations and AUROC on a labelled split."""

from __future__ import annotations

import argparse
from pathlib import Path

from convirt.cli.common import (
    add_checkpoint_arguments,
    add_input_arguments,
    eval_batches,
    model_from_args,
)
from convirt.zeroshot.operating_points import RULES, parse_rule
from convirt.zeroshot.subgroups import COLUMNS


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
        help="shard split (no image or patient of the evaluated one) whose Youden's J picks the F1/sensitivity/"
        "specificity threshold, and on which the calibration and operating points are fitted instead of on a "
        "validation fold of the evaluated images (default: no F1 threshold; a fold of 30%% of the patients)",
    )
    parser.add_argument(
        "--subgroups",
        nargs="*",
        metavar="COLUMN",
        help="AUROC per subgroup of these metadata columns (sex, age_band, view, source) with the gap between the "
        "best and the worst (default: those of sex, age_band, view with two groups or more; none: no subgroups)",
    )
    parser.add_argument(
        "--calibration",
        metavar="FILE",
        help="a calibration.json of an earlier run (its operating points with it), applied to these images; "
        "refused if it was fitted on any of them (default: fit one on a patient-grouped validation fold of "
        "these images and report on the other patients)",
    )
    parser.add_argument(
        "--calibration-method",
        choices=("platt", "temperature"),
        default="platt",
        help="Platt (slope and intercept on the logit, the default) or temperature (one T) per finding",
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
    from convirt.data.inputs import parse_where
    from convirt.embeddings import embed_batches
    from convirt.models.fingerprint import model_fingerprint
    from convirt.zeroshot import ZeroShotClassifier, load_descriptors
    from convirt.zeroshot.calibration import Calibration, scores_from
    from convirt.zeroshot.evaluate import aligned_labels, assess_and_save, evaluate_zeroshot, labelled_rows
    from convirt.zeroshot.plots import plot_explained_batch

    for rule in args.operating_points:  # a bad rule, column or calibration file fails before any embedding
        parse_rule(rule)
    if unknown := sorted(set(args.subgroups or ()) - set(COLUMNS)):
        raise ValueError(f"unknown --subgroups columns {unknown}; known: {', '.join(COLUMNS)}")
    if args.calibration and args.threshold_split:
        raise ValueError("--calibration applies a saved calibration; --threshold-split fits one there: give one")
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
    validation = (
        None if tuning is None else labelled_rows(loaded.model, loaded.tokenizer, descriptors, tuning, args.labels)
    )
    text = assess_and_save(
        *(evaluation, embedded, args.output, given, validation, args.calibration_method, args.validation_fraction),
        *(args.seed, args.bootstrap, args.operating_points, made_by, args.subgroups),
    )
    if args.figures > 0:
        batch = next(iter(eval_batches(loaded, args.data, args.split, args.figures, where=where, table=args)))
        figures = Path(args.output) / "figures"
        plot_explained_batch(batch, ZeroShotClassifier(loaded.model, loaded.tokenizer, descriptors), figures)
    print(text)
