"""Case images: shard members read at their recorded offsets, which cases have an image settled at
start (no file-system call after), and bounded reads of hostile members."""

import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt.data.images import RefusedImageError
from convirt.serve.cases import CaseImages


def shard_images(shards: Path) -> dict[str, Image.Image]:
    """Every image of a shard folder by key, read the ordinary way (tarfile)."""
    images = {}
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive:
                stem, suffix = os.path.splitext(member.name)
                if suffix == ".jpg":
                    images[stem] = Image.open(io.BytesIO(archive.extractfile(member).read())).convert("L")
    return images


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels and holds none."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def image_file(path: Path, shade: int = 90) -> str:
    Image.new("L", (40, 48), shade).save(path)
    return str(path)


def test_shard_images_read_at_their_offsets_equal_those_read_by_tarfile(phantom_shards):
    expected = shard_images(phantom_shards)
    keys = sorted(expected)
    assert len(keys) > 20 and len(list(phantom_shards.glob("*.tar"))) > 1
    images = CaseImages([{"key": key} for key in keys] + [{"key": "not-in-any-shard"}], phantom_shards)
    for case, key in enumerate(keys):
        assert images.has_image(case)
        np.testing.assert_array_equal(np.asarray(images.image(case)), np.asarray(expected[key]))
    assert not images.has_image(len(keys))
    assert images.jpeg(0)[:3] == b"\xff\xd8\xff"


def test_has_image_is_decided_at_start_with_no_file_system_call(phantom_shards, tmp_path, monkeypatch):
    key = sorted(shard_images(phantom_shards))[0]
    present, vanished = image_file(tmp_path / "a.png"), image_file(tmp_path / "b.png")
    metadata = [
        {"key": "a", "path": present},
        {"key": "b", "path": vanished},
        {"key": "c", "path": str(tmp_path / "never.png")},
        {"key": key},  # a shard member
        {"key": key, "path": str(tmp_path / "never.png")},  # a path that is not there: its shard member
        {"key": "d"},
    ]
    images = CaseImages(metadata, phantom_shards)
    os.unlink(vanished)

    def no_file_system(*args, **kwargs):
        raise AssertionError("has_image called the file system")

    with monkeypatch.context() as patch:
        for name in ("is_file", "exists", "stat"):
            patch.setattr(Path, name, no_file_system)
        patch.setattr(os, "stat", no_file_system)
        patch.setattr("builtins.open", no_file_system)
        served = [images.has_image(case) for case in range(len(metadata))]
    assert served == [True, True, False, True, True, False]


def test_an_image_gone_since_start_raises_file_not_found_without_its_path(phantom_shards, tmp_path):
    tar = next(iter(sorted(phantom_shards.glob("*.tar"))))
    copy = tmp_path / "shards"
    copy.mkdir()
    (copy / tar.name).write_bytes(tar.read_bytes())
    with tarfile.open(tar) as archive:
        key = next(os.path.splitext(m.name)[0] for m in archive if m.name.endswith(".jpg"))
    path = image_file(tmp_path / "patient-jones.png")
    images = CaseImages([{"key": "a", "path": path}, {"key": key}], copy)
    assert images.image(0).size == (40, 48) and images.image(1).mode == "L"
    os.unlink(path)
    os.unlink(copy / tar.name)
    for case in (0, 1):
        with pytest.raises(FileNotFoundError, match=f"case {case}'s image is gone") as caught:
            images.image(case)
        assert "jones" not in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_a_shard_shortened_since_start_is_refused(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    tar = write_tar(shards / "train-000000.tar", {"a.jpg": b"\xff\xd8\xff" + bytes(5000)})
    images = CaseImages([{"key": "a"}], shards)
    tar.write_bytes(tar.read_bytes()[:2000])
    with pytest.raises(OSError, match="shorter than when the service started"):
        images.image(0)


def test_hostile_shard_members_are_bounded(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    jpeg = io.BytesIO()
    Image.new("L", (32, 32), 7).save(jpeg, format="JPEG")
    write_tar(
        shards / "train-000000.tar",
        {
            "small.jpg": jpeg.getvalue(),
            "wide.png": png_header(9000, 9000),  # 81 MP: past the pixel limit, under PIL's own
            "bomb.png": png_header(20000, 20000),  # 400 MP: past PIL's limit too
            "big.jpg": jpeg.getvalue() + bytes(4096),
            "text.jpg": b"not an image at all",
        },
    )
    with tarfile.open(shards / "train-000000.tar", "a") as archive:  # a link: no bytes of its own
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "small.jpg"
        archive.addfile(link)
    keys = ["small", "wide", "bomb", "big", "text", "link"]
    images = CaseImages([{"key": key} for key in keys], shards, max_member_bytes=4000)
    assert [images.has_image(case) for case in range(len(keys))] == [True, True, True, False, True, False]
    assert images.image(0).size == (32, 32)
    for case in (1, 2):
        with pytest.raises(RefusedImageError) as refused:
            images.image(case)
        assert refused.value.reason == "image_too_large"
    with pytest.raises(OSError):
        images.image(4)


def test_a_compressed_tar_is_refused_by_name(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "train-000000.tar", {"a.jpg": b"\xff\xd8\xff"}, mode="w:gz")
    with pytest.raises(ValueError, match="train-000000.tar is not an uncompressed tar"):
        CaseImages([{"key": "a"}], shards)


def test_a_damaged_archive_image_is_a_404_not_a_500(service, monkeypatch, tmp_path):
    from convirt.data.images import load_grayscale
    from convirt.serve.app import create_app
    from tests.data.test_pixel_cap import broken_png
    from tests.serve.client import local_client

    broken = broken_png(tmp_path / "broken.png")
    monkeypatch.setattr(service.images, "jpeg", lambda case: load_grayscale(broken))
    monkeypatch.setattr(service.images, "image", lambda case: load_grayscale(broken))
    client = local_client(create_app(service))
    assert client.get("/v1/cases/7/image").status_code == 404
    assert client.post("/v1/diagnose", data={"case": "7", "saliency": "true"}).status_code == 404


def test_the_service_holds_no_row_of_its_index(archive, monkeypatch):
    """One pass over the index's rows at start keeps arrays only: labels, patients and which cases have an
    image agree with the rows read whole, and a case's row is read when it is shown."""
    import json

    from convirt.data.labels import label_matrix
    from convirt.retrieval import MetadataRows
    from convirt.serve.service import CaseService
    from tests.bench.test_retrieval import held_rows

    loaded, folder, _ = archive
    count = held_rows(monkeypatch)
    service = CaseService(loaded, folder, knn_k=5)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert count["parsed"] >= len(rows) > 50 and count["peak"] <= 2, count
    assert isinstance(service.metadata, MetadataRows)
    np.testing.assert_array_equal(service.labels, label_matrix(rows, service.finding_names))
    patients = [str(row.get("patient_id") or row.get("key")) for row in rows]
    for patient in {*patients, "someone else"}:
        assert service._exclusions(patient) == {i for i, p in enumerate(patients) if p == patient}
    assert [service.images.has_image(case) for case in range(len(rows))] == [True] * len(rows)
    before = count["parsed"]
    assert service.case(3)["report"] == rows[3]["text"] and count["parsed"] == before + 1


def test_shards_of_other_tools_serve_their_webp_and_jpg_images_from_a_folder_or_a_pattern(tmp_path):
    # img2dataset-style tars written by webdataset's own TarWriter: webp and jpg images beside txt and json.
    import webdataset as wds

    def encoded(shade: int, kind: str) -> bytes:
        out = io.BytesIO()
        Image.new("L", (36, 30), shade).save(out, format=kind, **({"lossless": True} if kind == "WEBP" else {}))
        return out.getvalue()

    folder = tmp_path / "img2dataset"
    folder.mkdir()
    shades = {}
    for number, kind in enumerate(("WEBP", "JPEG")):
        with wds.TarWriter(str(folder / f"{number:05d}.tar")) as sink:
            for i in range(3):
                key, shade = f"{number:05d}{i:04d}", 40 + 60 * i + number
                shades[key] = shade
                field = "webp" if kind == "WEBP" else "jpg"
                sink.write({"__key__": key, field: encoded(shade, kind), "txt": b"report", "json": {"url": "x"}})
    rows = [{"key": key} for key in shades] + [{"key": "elsewhere"}]
    for shards in (folder, str(folder / "{00000..00001}.tar")):
        images = CaseImages(rows, shards)
        assert images.served.tolist() == [True] * 6 + [False]
        for case, (key, shade) in enumerate(shades.items()):
            image = images.image(case)
            assert image.size == (36, 30) and abs(int(np.asarray(image).mean()) - shade) <= 2, key
    with pytest.raises(ValueError, match="reads local tars .* not s3://bucket/x.tar: copy the shards here"):
        CaseImages(rows, "s3://bucket/x.tar")
    with pytest.raises(ValueError, match="no shard at .*00002.tar"):
        CaseImages(rows, str(folder / "{00000..00002}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tar shards in"):
        CaseImages(rows, tmp_path / "empty")
