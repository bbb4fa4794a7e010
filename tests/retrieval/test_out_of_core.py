"""IVF indexes built out of core (trained on a sample, filled part by part, lists on disk) against the
in-memory build of the same vectors, the merge of separate jobs against one job, and searching the
mapped lists."""

import json
import shutil
import subprocess
import sys

import faiss
import numpy as np
import pytest

from convirt.retrieval import (
    ArrayPart,
    add_parts,
    build_index,
    build_out_of_core,
    load_index,
    merge_index_folders,
    merge_sub_indexes,
    open_index_folder,
    out_of_core_needed,
    part_block,
    search,
    train_ivf,
)
from convirt.retrieval.folder import MetadataRows, search_index_folder


def _clustered(n=3000, d=32, centres=20, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    return (c[rng.integers(centres, size=n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def _parts(x, size=500):
    return [ArrayPart(f"part-{i:03d}", x[start : start + size]) for i, start in enumerate(range(0, len(x), size))]


def _same_results(a, b, queries, k=10):
    """Same ids (where a query's scores are well apart) and the same scores within float tolerance."""
    s1, i1 = search(a, queries, k)
    s2, i2 = search(b, queries, k)
    assert np.allclose(s1, s2, atol=1e-5)
    apart = np.all(np.diff(s1, axis=1) < -1e-4, axis=1)  # no near-ties, whose order BLAS's last bits may swap
    assert apart.sum() > len(queries) // 2 and np.array_equal(i1[apart], i2[apart])


@pytest.mark.parametrize(
    "factory",
    ["IVF16,Flat", "IVF16,SQ8", pytest.param("OPQ8,IVF16,PQ8x4", marks=pytest.mark.slow)],  # OPQ training: 10-35 s
)
def test_out_of_core_equals_the_in_memory_build(factory, tmp_path):
    x = _clustered()
    options = {"train_size": 1500, "seed": 3, "search_params": "nprobe=4"}
    in_memory, _ = build_index(x, factory, **options)
    info = build_out_of_core(_parts(x), tmp_path / "idx", factory, sub_bytes=1200 * 40, **options)
    assert info.count == 3000 and info.search_params == "nprobe=4"
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "index.faiss",
        "info.json",
        "lists.ivfdata",
        "metadata.jsonl",
    ]
    assert not (tmp_path / "idx.work").exists()  # the trained index and the sub-indexes are gone once merged
    on_disk, _ = load_index(tmp_path / "idx")
    ivf, reference = faiss.extract_index_ivf(on_disk), faiss.extract_index_ivf(in_memory.index)
    assert ivf.nprobe == 4  # the same training sample made the same lists:
    assert np.allclose(ivf.quantizer.reconstruct_n(0, 16), reference.quantizer.reconstruct_n(0, 16), atol=1e-6)
    _same_results(in_memory, on_disk, x[::60])


def test_separate_jobs_merge_into_the_one_job_index(tmp_path):
    x = _clustered()
    parts = _parts(x, 400)  # 8 parts
    one = build_out_of_core(parts, tmp_path / "one", "IVF16,Flat", train_size=1500, search_params="nprobe=4")
    train_ivf(parts, tmp_path / "trained", "IVF16,Flat", train_size=1500, search_params="nprobe=4")
    subs = [tmp_path / f"sub{n}" for n in (1, 2, 3)]
    for n, sub in zip((1, 2, 3), subs):  # each job lists every part and adds its block
        add_parts(tmp_path / "trained", _parts(x, 400), sub, part_block(len(parts), n, 3))
    merged = merge_index_folders([subs[2], subs[0], subs[1]], tmp_path / "merged")  # any order
    assert merged.info == one
    a, b = load_index(tmp_path / "one")[0], merged.index
    s1, i1 = search(a, x[::30], 10)
    s2, i2 = search(b, x[::30], 10)
    assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
    assert (tmp_path / "one" / "metadata.jsonl").read_bytes() == (tmp_path / "merged" / "metadata.jsonl").read_bytes()
    assert merged.metadata[1999] == {"key": "part-004/399"}
    # An array of more jobs than parts (10 for 8): the two jobs without a part write empty sub-indexes.
    many = [tmp_path / f"many{n}" for n in range(1, 11)]
    for n, sub in enumerate(many, 1):
        add_parts(tmp_path / "trained", parts, sub, part_block(len(parts), n, 10))
    assert sum(not part_block(len(parts), n, 10) for n in range(1, 11)) == 2
    again = merge_index_folders(many[::-1], tmp_path / "many")
    assert again.info == one and np.array_equal(search(again.index, x[::30], 10)[1], i1)
    assert (tmp_path / "many" / "metadata.jsonl").read_bytes() == (tmp_path / "one" / "metadata.jsonl").read_bytes()
    with pytest.raises(ValueError, match="ids 800..1999 are in no sub-index"):
        merge_sub_indexes([subs[0], subs[2]], tmp_path / "bad")
    with pytest.raises(ValueError, match="that another sub-index holds too"):
        merge_sub_indexes([*subs, subs[1]], tmp_path / "bad")
    with pytest.raises(ValueError, match="merge only with each other"):
        merge_index_folders([subs[0], tmp_path / "one"], tmp_path / "bad")
    with pytest.raises(ValueError, match="was built out of core .*: merge the sub-indexes it was made of"):
        merge_index_folders([tmp_path / "one", tmp_path / "one"], tmp_path / "bad")
    train_ivf(parts, tmp_path / "other", "IVF16,Flat", train_size=1500, seed=1)
    add_parts(tmp_path / "other", parts, tmp_path / "sub-other", part_block(len(parts), 2, 3))
    with pytest.raises(ValueError, match="filled from another trained index"):
        merge_sub_indexes([subs[0], tmp_path / "sub-other", subs[2]], tmp_path / "bad")
    with pytest.raises(ValueError, match="not those .* was trained for"):
        add_parts(tmp_path / "trained", parts[:-1], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_mapped_index_searches_wherever_its_folder_moves(tmp_path):
    x = _clustered()
    rows = [{"key": f"k{i}", "patient_id": f"p{i // 3}", "labels": ["Édème"] if i % 2 else []} for i in range(3000)]
    parts = [ArrayPart(f"part-{n}", x[s : s + 1000], rows[s : s + 1000]) for n, s in enumerate(range(0, 3000, 1000))]
    build_out_of_core(parts, tmp_path / "built", "IVF16,SQ8", train_size=1500, search_params="nprobe=16")
    shutil.move(tmp_path / "built", tmp_path / "moved")  # the lists are found beside index.faiss, not where built
    folder = open_index_folder(tmp_path / "moved", mmap=True)
    assert isinstance(folder.metadata, MetadataRows) and len(folder.metadata) == 3000
    assert folder.metadata[-1] == rows[-1] and folder.metadata[10:12] == rows[10:12] and list(folder.metadata) == rows
    hits = search_index_folder(folder, x[7], k=3, exclude={7})
    assert [hit["key"] for hit in hits][:1] != ["k7"] and hits[0]["patient_id"] is not None
    assert search(folder.index, x[:20], 1)[1][:, 0].tolist() == list(range(20))
    size = (tmp_path / "moved" / "index.faiss").stat().st_size
    assert size < (tmp_path / "moved" / "lists.ivfdata").stat().st_size / 10  # the vectors are in the lists file


def test_what_cannot_be_built_out_of_core_is_refused(tmp_path):
    parts = _parts(_clustered(600))
    with pytest.raises(ValueError, match="'HNSW32' cannot be built out of core"):
        train_ivf(parts, tmp_path / "t", "HNSW32")
    with pytest.raises(ValueError, match="exact re-ranking keeps every vector in memory"):
        train_ivf(parts, tmp_path / "t", "IVF8,PQ4,RFlat")
    with pytest.raises(ValueError, match="cannot train 'IVF1024,Flat' on 600 vectors"):
        train_ivf(parts, tmp_path / "t", "IVF1024,Flat")
    with pytest.raises(ValueError, match="not a sub-index"):
        merge_sub_indexes([tmp_path], tmp_path / "m")
    assert out_of_core_needed(10_000_000, 256, available=24 * 2**30)  # 10.24 GB is past a quarter of 24 GiB
    assert not out_of_core_needed(1_000_000, 256, available=24 * 2**30)
    assert [part_block(10, n, 3) for n in (1, 2, 3)] == [range(0, 3), range(3, 6), range(6, 10)]


def test_metadata_rows_read_when_asked(tmp_path):
    path = tmp_path / "metadata.jsonl"
    path.write_text('{"key": "a"}\n{"key": "é"}\n{"key": "c"}', encoding="utf-8")  # no newline after the last
    rows = MetadataRows(path)
    assert len(rows) == 3 and rows[1] == {"key": "é"} and rows[-1] == {"key": "c"} and rows[::2][1] == {"key": "c"}
    with pytest.raises(IndexError):
        rows[3]


@pytest.mark.slow  # six `convirt` processes (torch imported in each): ~35 s on 2 cores
def test_the_commands_of_separate_jobs(tmp_path):
    from convirt.embeddings.store import PartWriter

    x = _clustered(2400, 16)
    writer = PartWriter(tmp_path / "emb", chunk_size=300)
    writer.add(x, [{"key": f"k{i}", "labels": ["Edema"] if i % 3 else []} for i in range(len(x))])
    writer.close()
    (tmp_path / "emb" / "info.json").write_text(json.dumps({"model_name": "m", "modality": "image"}))

    def convirt(*args):
        command = [sys.executable, "-m", "convirt.cli.main", "index", *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    emb, common = tmp_path / "emb", ["--factory", "IVF8,Flat", "--search-params", "nprobe=8"]
    trained, subs = tmp_path / "t", [tmp_path / "s1", tmp_path / "s2"]
    assert "index add" in convirt("build", "--embeddings", emb, *common, "--train-only", "--output", trained)
    for n, sub in enumerate(subs, 1):
        convirt("add", "--trained", trained, "--embeddings", emb, "--part", f"{n}/2", "--output", sub)
    convirt("merge", "--inputs", *subs[::-1], "--output", tmp_path / "jobs")
    convirt("build", "--embeddings", emb, *common, "--out-of-core", "--output", tmp_path / "one")
    out = convirt("eval", "--index", tmp_path / "jobs", "--queries", emb, "-k", "5", "--include-same-patient")
    assert "label precision@5" in out
    a, b = load_index(tmp_path / "jobs")[0], load_index(tmp_path / "one")[0]
    assert np.array_equal(search(a, x[:40], 5)[1], search(b, x[:40], 5)[1])


@pytest.mark.slow  # embeds the phantom label table with the tiny model: ~10 s
def test_the_service_reads_an_index_built_out_of_core(labels_csv, tiny_checkpoint, tmp_path):
    from convirt.data.inputs import read_image_rows
    from convirt.embeddings.encode import embed_image_files
    from convirt.models.fingerprint import model_fingerprint
    from convirt.models.sources import load_model
    from convirt.serve.service import CaseService

    loaded = load_model(str(tiny_checkpoint))
    rows = read_image_rows(labels_csv)
    vectors = embed_image_files(loaded.model, [row.image_path for row in rows], loaded.preprocess_cfg)
    metadata = [{"key": row.key, **row.metadata(), "path": row.image_path} for row in rows]
    parts = [
        ArrayPart(f"part-{n}", vectors[s : s + 40], metadata[s : s + 40]) for n, s in enumerate(range(0, len(rows), 40))
    ]
    build_out_of_core(
        parts, tmp_path / "idx", "IVF4,Flat", fingerprint=model_fingerprint(loaded), search_params="nprobe=4"
    )
    service = CaseService(loaded, tmp_path / "idx", knn_k=5)
    hits = service.search_vector(vectors[3], k=3)
    assert len(hits) == 3 and service.info()["index"]["count"] == len(rows)
    assert service.search_vector(vectors[3], k=1, patient_id=rows[3].patient_id)[0]["score"] < hits[0]["score"]
    from convirt.bench import query_index_folder  # `convirt index query`, its rows read when shown

    shown = query_index_folder(
        open_index_folder(tmp_path / "idx"), loaded, rows[3].image_path, k=2, exclude_same_patient=True
    )
    assert len(shown) == 2 and all(hit["patient_id"] != rows[3].patient_id for hit in shown)


def test_the_build_command_goes_out_of_core_by_itself_past_a_quarter_of_memory(tmp_path, monkeypatch, capsys):
    from argparse import Namespace

    from convirt.cli.index_jobs import build_out_of_core_if_chosen  # `convirt index build`, without its parser
    from convirt.embeddings.store import PartWriter

    writer = PartWriter(tmp_path / "emb", chunk_size=500)
    writer.add(_clustered(1500, 16), [{"key": f"k{i}"} for i in range(1500)])
    writer.close()

    def build(factory, output, **flags):
        options = {"refine": False, "out_of_core": False, "train_only": False, **flags}
        args = Namespace(embeddings=tmp_path / "emb", factory=factory, train_size=1000, search_params=None, **options)
        return build_out_of_core_if_chosen(Namespace(**vars(args), output=tmp_path / output))

    monkeypatch.setattr("convirt.retrieval.ondisk.available_memory", lambda: 4 * 1500 * 16 * 4 - 1)  # just past
    assert build("IVF8,Flat", "ivf") and "building out of core" in capsys.readouterr().out
    assert (tmp_path / "ivf" / "lists.ivfdata").is_file()
    assert not build("Flat", "flat") and "Flat is built in memory" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--refine keeps a copy of every vector"):
        build("IVF8,Flat", "refined", refine=True, out_of_core=True)
    monkeypatch.setattr("convirt.retrieval.ondisk.available_memory", lambda: 4 * 1500 * 16 * 4)  # not past
    assert not build("IVF8,Flat", "small") and build("IVF8,Flat", "asked", out_of_core=True)


@pytest.mark.slow  # several seconds (the fast suite keeps under 5 minutes)
def test_index_commands_refuse_to_replace_what_they_did_not_write(tmp_path, capsys):
    # `atomic_folder` replaces the output whole: an input, or a folder of other files, would be lost.
    from convirt.cli.main import main
    from convirt.embeddings.store import PartWriter

    writer = PartWriter(tmp_path / "emb", chunk_size=300)
    writer.add(_clustered(600, 16), [{"key": f"k{i}"} for i in range(600)])
    writer.close()
    (tmp_path / "emb" / "info.json").write_text(json.dumps({"model_name": "m", "modality": "image"}))
    before = sorted(path.name for path in (tmp_path / "emb").iterdir())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("kept")
    emb, built = str(tmp_path / "emb"), str(tmp_path / "idx")
    build = ["index", "build", "--embeddings", emb, "--factory", "IVF4,Flat"]
    for output, said in ((emb, "is one of the inputs"), (str(tmp_path / "notes"), "holds other files")):
        assert main([*build, "--output", output]) == 2
        assert said in capsys.readouterr().err
    assert (tmp_path / "notes" / "mine.txt").read_text() == "kept" and sorted(
        p.name for p in (tmp_path / "emb").iterdir()
    ) == before
    assert main([*build, "--output", built]) == 0 and main([*build, "--output", built]) == 0  # its own: replaced
    assert main([*build, "--train-only", "--output", str(tmp_path / "t")]) == 0
    add = ["index", "add", "--trained", str(tmp_path / "t"), "--embeddings", emb]
    assert main([*add, "--part", "1/3", "--output", str(tmp_path / "s3")]) == 0  # 2 parts, 3 jobs: job 1 has none
    assert "job 1 of 3 has none of the 2 parts: empty sub-index" in capsys.readouterr().out
    assert main([*add, "--output", emb]) == 2 and "is one of the inputs" in capsys.readouterr().err
    assert main(["index", "merge", "--inputs", built, str(tmp_path / "s3"), "--output", built]) == 2
    assert "is one of the inputs" in capsys.readouterr().err


def test_a_build_killed_midway_resumes_from_its_work_folder(tmp_path, monkeypatch):
    import convirt.retrieval.ondisk as ondisk

    x = _clustered()
    parts, options = _parts(x, 400), {"train_size": 1500, "search_params": "nprobe=4", "sub_bytes": 800 * 72}
    whole = build_out_of_core(parts, tmp_path / "whole", "IVF16,Flat", **options)  # 8 parts, a sub-index each
    add, calls = ondisk.add_parts, []

    def dies_at_the_third(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is stopped here
        calls.append(args[2])
        return add(*args, **kwargs)

    monkeypatch.setattr(ondisk, "add_parts", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        build_out_of_core(parts, tmp_path / "idx", "IVF16,Flat", **options)
    work = tmp_path / "idx.work"
    assert sorted(p.name for p in work.iterdir()) == ["sub-0000", "sub-0001", "trained"]
    calls.clear()
    monkeypatch.setattr(ondisk, "add_parts", lambda *args, **kwargs: calls.append(args[2]) or add(*args, **kwargs))
    monkeypatch.setattr(ondisk, "train_ivf", lambda *args, **kwargs: pytest.fail("trained again"))
    resumed = build_out_of_core(parts, tmp_path / "idx", "IVF16,Flat", **options)
    assert [p.name for p in calls] == [f"sub-{n:04d}" for n in range(2, 8)]  # only the sub-indexes not made
    assert (work.with_name("idx") / "index.faiss").is_file()
    assert resumed == whole and not work.exists()
    a, b = load_index(tmp_path / "whole")[0], load_index(tmp_path / "idx")[0]
    assert np.array_equal(search(a, x[::40], 10)[1], search(b, x[::40], 10)[1])
