"""The import rules of ../shared/STYLE.md, checked by walking each module's imports."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "convirt"
# package -> convirt packages it may import
ALLOWED = {
    "data": set(),
    "models": set(),
    "losses": set(),
    "retrieval": set(),
    # embeddings and zeroshot read data's inputs and label tables; they use a model only through encode_*
    "embeddings": {"data"},
    "zeroshot": {"embeddings", "data"},
    # training is listed above embeddings and zeroshot in STYLE.md: its callbacks may score with them
    "training": {"data", "models", "losses", "embeddings", "zeroshot"},
    # bench composes the layers into evaluation protocols (metadata in, metrics out)
    "bench": {"data", "models", "losses", "retrieval", "embeddings", "zeroshot"},
    # serve puts a model, an index and a descriptor set behind HTTP; it trains nothing
    "serve": {"data", "models", "retrieval", "embeddings", "zeroshot"},
    "cli": {"data", "models", "losses", "retrieval", "embeddings", "zeroshot", "training", "bench", "serve"},
}
LIGHTNING = ("lightning", "pytorch_lightning")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package):
    for path in (PACKAGE / package).rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "convirt" and len(parts) > 1 and parts[1] in ALLOWED and parts[1] != package:
                assert parts[1] in ALLOWED[package], f"{path.relative_to(PACKAGE)} imports {name}"
            if package not in ("training", "cli"):
                assert parts[0] not in LIGHTNING, f"{path.relative_to(PACKAGE)} imports {name}"


# Where each concept lives: the one module that defines it (anything else imports it from there).
HOMES = {
    "_io": ["atomic_path", "atomic_folder", "write_json", "json_safe", "file_sha256", "check_output_folder"],
    "_memory": ["available_memory"],
    "training/launch": ["require_launcher", "starting_lightning"],
    "_embedding_space": ["check_same_space", "canonical_precision"],
    "data/shards": ["read_manifest", "shard_urls", "require_images"],
    "data/writer": ["write_shards", "assign_split"],
    "data/journal": ["Conversion", "ShardFile"],
    "data/parts": ["Part", "parse_part", "part_of", "shard_name", "merge_parts"],
    "data/labels": ["label_matrix", "has_labels", "missing_labels"],
    "data/columns": ["LabelColumn", "LabelSets", "IdColumn", "IdGroups", "encoded_id", "patient_of"],
    "data/fields": ["Fields", "parse_fields", "pick_fields", "checked_meta"],
    "data/foreign": ["ForeignShards", "open_foreign_shards", "is_foreign_shards", "describe_input"],
    "data/inputs": ["build_eval_batches"],
    "models/fingerprint": ["model_fingerprint"],
    "models/onnx_export": ["export_onnx", "check_against_torch", "OnnxMismatchError"],
    "models/onnx_runtime": ["load_onnx_model", "OnnxDualEncoder", "is_onnx_folder", "require_onnx"],
    "models/adapters": [
        "AdapterConfig",
        "TowerAdapter",
        "add_adapters",
        "merge_adapters",
        "adapter_state_dict",
        "load_adapter_state_dict",
        "trainable_parameters",
    ],
    "models/sources": ["load_model", "describe_sources"],
    "models/initial": ["initial_model", "initial_inputs", "absolute_source"],
    "models/adapted": ["adapt", "adapter_config", "weights_sha256", "registry_base", "load_adapted"],
    "embeddings/run": ["embed_to_folder", "encode_here"],
    "embeddings/store": [
        "load_embedding_folder",
        "open_embedding_folder",
        "close_embedding_folder",
        "list_embedding_parts",
        "EmbeddingPart",
    ],
    "embeddings/encode": ["embed_image_files", "Encoder"],
    "embeddings/precision": ["planned_precision"],
    "training/predict": ["encode_on_devices"],
    "retrieval/folder": [
        "load_index_folder",
        "build_index_folder",
        "merge_index_folders",
        "search_index_folder",
        "patient_rows",
        "open_index_folder",
        "MetadataRows",
    ],
    "retrieval/index": ["train_on", "quiet_faiss_prints", "load_index", "set_search_params"],
    "retrieval/ondisk": [
        "train_ivf",
        "add_parts",
        "merge_sub_indexes",
        "build_out_of_core",
        "part_block",
        "is_sub_index",
        "out_of_core_needed",
        "ArrayPart",
        "VectorPart",
    ],
    "retrieval/metrics": ["image_text_recall", "recall_at_ks", "same_patient_exclusions"],
    "cli/common": ["eval_batches", "with_ci", "fmt_value", "model_from_args"],
    "zeroshot/evaluate": ["aligned_labels", "evaluate_zeroshot", "save_zeroshot_folder", "load_zeroshot_folder"],
    "bench/retrieval": ["evaluate_index_folder", "query_index_folder"],
    "bench/suite": ["load_suite", "list_suites"],
    "bench/cache": ["cached_embeddings", "data_sha256", "model_key"],
    "bench/runner": ["run_bench"],
    "bench/leaderboard": ["write_leaderboard"],
    "bench/card": ["model_card", "bench_rows"],
    "bench/leakage": ["audit", "cached_signatures"],
    "bench/finetune": ["finetune_protocol", "patient_parts"],
    "bench/figures": ["write_figures"],
    "data/signatures": ["read_signatures", "signature"],
    "data/test_sets": ["read_test_set"],
    "retrieval/duplicates": ["find_duplicates"],
    "training/finetune": ["finetune_predict"],
    "zeroshot/robustness": ["score_phrasings"],
    "serve/service": ["CaseService"],
    "serve/app": ["create_app"],
    "serve/uploads": ["read_upload", "sniff"],
    "serve/batching": ["MicroBatcher"],
    "serve/admission": ["Admission", "Limits", "BodyTooLarge"],
    "serve/shown": ["shown_metadata", "case_ref"],
    "serve/explain": ["Explainer", "explained_findings", "saliency_refusal"],
    "serve/token": ["read_token"],
    "data/images": ["check_pixels", "damage_as_oserror", "load_grayscale"],
    "zeroshot/folds": ["validation_split"],
    "zeroshot/calibration": ["fit_calibration", "check_not_fitted_on", "Calibration"],
    "zeroshot/reliability": ["expected_calibration_error", "reliability_diagram"],
    "zeroshot/operating_points": ["choose_operating_point", "evaluate_operating_point"],
    "zeroshot/subgroups": ["subgroup_auroc", "age_band"],
    "zeroshot/metrics": ["mean_auroc_ci", "bootstrap_ci"],
    "zeroshot/validated": ["fit_on_validation", "validate", "validate_or_skip", "save_validated"],
    "zeroshot/calibration_report": ["report_on_test", "save_reliability_diagrams", "format_calibration"],
    "bench/clinical_protocols": ["calibration", "operating_points", "subgroups"],
    "bench/rows": ["_row"],
    "serve/calibrated": ["load_served_calibration", "ServedCalibration"],
    "losses/gather": ["gather_pairs", "gather_rows"],
    "training/grad_cache": ["grad_cache_step"],
    "training/optimization": ["parameter_groups", "warmup_cosine"],
    "training/metrics": ["retrieval_recalls"],
}


def _definitions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = str(path.relative_to(PACKAGE).with_suffix(""))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.col_offset == 0:
                found.setdefault(node.name, []).append(module)
    return found


@pytest.mark.parametrize("home", sorted(HOMES))
def test_each_concept_is_defined_once_in_its_home(home):
    definitions = _definitions()
    for name in HOMES[home]:
        assert definitions.get(name) == [home], f"{name} defined in {definitions.get(name)}, expected only {home}"


def test_modules_stay_small_and_commands_thin():
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        limit = 160 if path.parent.name == "cli" else 400
        assert lines <= limit, f"{path.relative_to(PACKAGE)} has {lines} lines (at most {limit})"
