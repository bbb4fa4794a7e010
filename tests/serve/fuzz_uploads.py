"""Hostile uploads for `convirt serve`, as Hypothesis strategies.

Seed images of every kind the service reads are made at run time (:func:`make_seeds`: 8-bit and
16-bit PNG, JPEG, DICOM uncompressed, deflated and RLE); :func:`uploads` draws requests from them:
the bytes flipped, cut, grown or shortened; headers that lie about the size (PNG's IHDR with its
CRC fixed so that the lie passes the check, JPEG's SOF); DICOM attributes and transfer syntaxes
rewritten; sent under wrong file names and content types, as multipart bodies cut short or framed
wrongly, empty, or as form fields without an image. Each request carries its ``kind`` and
``mutation`` so that a campaign can count what it sent.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from hypothesis import note
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import write_dicom

T = TypeVar("T")
SHAPE = (40, 48)  # rows, columns of every seed: decoded and embedded in milliseconds
DELETE = object()  # a DICOM attribute value meaning "remove the element"
BOUNDARY = b"convirt-fuzz-boundary"


def weighted(options: dict[T, int]) -> st.SearchStrategy[T]:
    """One of ``options``, each drawn in proportion to its weight."""
    return st.sampled_from([option for option, weight in options.items() for _ in range(weight)])


# --- seeds -------------------------------------------------------------------------------------


class Seeds(dict[str, bytes]):
    """Seed files by kind, shown by their kinds and sizes (a failing example prints its strategy)."""

    def __repr__(self) -> str:
        return "Seeds(" + ", ".join(f"{kind}: {len(data)} B" for kind, data in self.items()) + ")"


def make_seeds(folder: Path) -> Seeds:
    """One small valid file of each kind the service reads, by kind name (written under ``folder``)."""
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    ramp = np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE)
    seeds = Seeds()
    for kind, image, fmt in (
        ("png", Image.fromarray((ramp % 256).astype(np.uint8)), "PNG"),
        ("png16", Image.fromarray((ramp * 31 % 65536).astype(np.uint16)), "PNG"),  # mode I;16
        ("jpeg", Image.fromarray((ramp % 256).astype(np.uint8)), "JPEG"),
    ):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        seeds[kind] = buffer.getvalue()
    pixels = (ramp % 4000).astype(np.uint16)
    for kind, syntax in (("dicom", None), ("dicom-deflated", DeflatedExplicitVRLittleEndian)):
        write_dicom(folder / f"{kind}.dcm", pixels, syntax=syntax)
        seeds[kind] = (folder / f"{kind}.dcm").read_bytes()
    ds = dcmread(folder / "dicom.dcm")
    ds.compress(RLELossless, generate_instance_uid=False)  # pydicom's own RLE encoder: no plugin needed
    seeds["dicom-rle"] = _dicom_bytes(ds)
    return seeds


# --- byte mutations, any kind --------------------------------------------------------------------


def position_in(data: bytes) -> st.SearchStrategy[int]:
    """A byte position of ``data``, half the time in its first 256 bytes (where parsers decide most)."""
    return st.one_of(st.integers(0, min(len(data), 256) - 1), st.integers(0, len(data) - 1))


@st.composite
def flipped(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to eight bytes XOR-ed with a non-zero byte."""
    out = bytearray(data)
    for position in draw(st.lists(position_in(data), min_size=1, max_size=8)):
        out[position] ^= draw(st.integers(1, 255))
    return bytes(out)


@st.composite
def truncated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut short (possibly to nothing)."""
    return data[: draw(st.one_of(position_in(data), st.just(len(data) - 1)))]


@st.composite
def inserted(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with up to 64 random bytes inserted."""
    at = draw(position_in(data))
    return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]


@st.composite
def deleted(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with up to 64 bytes taken out."""
    at = draw(position_in(data))
    return data[:at] + data[at + draw(st.integers(1, 64)) :]


# --- header rewrites, by kind --------------------------------------------------------------------

SIDES = (0, 1, 2, 47, 49, 4096, 8192, 8193, 20_000, 65_535)


def png_with_header(data: bytes, **fields: int) -> bytes:
    """``data`` (a PNG) with IHDR fields (``width``, ``height``, ``depth``, ``colour``, ``interlace``)
    replaced and the chunk's CRC recomputed, so that the header passes its check and only lies."""
    names = ("width", "height", "depth", "colour", "compression", "filter", "interlace")
    values = dict(zip(names, struct.unpack(">IIBBBBB", data[16:29]))) | fields
    header = struct.pack(">IIBBBBB", *(values[name] for name in names))
    return data[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + data[33:]


@st.composite
def png_header(draw: st.DrawFn, data: bytes) -> bytes:
    """A PNG declaring another size, and sometimes another bit depth, colour type or interlace."""
    sides = st.one_of(st.sampled_from((*SIDES, 2**31 - 1, 2**32 - 1)), st.integers(0, 2**32 - 1))
    fields = {"width": draw(sides), "height": draw(sides)}
    if draw(st.booleans()):
        fields["depth"] = draw(st.sampled_from((0, 1, 2, 4, 8, 16, 3, 255)))
        fields["colour"] = draw(st.sampled_from((0, 1, 2, 3, 4, 6, 7)))
        fields["interlace"] = draw(st.sampled_from((0, 1, 2)))
    note(f"PNG header: {fields}")
    return png_with_header(data, **fields)


@st.composite
def jpeg_header(draw: st.DrawFn, data: bytes) -> bytes:
    """A JPEG whose frame header (SOF0) declares another height and width."""
    at = data.index(b"\xff\xc0")  # the seed is baseline: SOF0, then length, precision, height, width
    height, width = draw(st.sampled_from(SIDES)), draw(st.sampled_from(SIDES))
    note(f"JPEG frame header: {width}x{height}")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


# Values a DICOM header may hold that no sane radiograph does; DELETE removes the element.
DICOM_ATTRIBUTES: dict[str, tuple[Any, ...]] = {
    "Rows": (0, 1, 39, 41, 8193, 12_000, 65_535, DELETE),
    "Columns": (0, 1, 47, 49, 8193, 65_535, DELETE),
    "NumberOfFrames": (0, 1, 2, 100, 65_535, -1),
    "BitsAllocated": (0, 1, 8, 12, 32, 64, 65_535, DELETE),
    "BitsStored": (0, 1, 8, 16, 32, 65_535, DELETE),
    "HighBit": (0, 15, 31, 65_535),
    "SamplesPerPixel": (0, 3, 4, 65_535, DELETE),
    "PixelRepresentation": (1, 2, DELETE),
    "PlanarConfiguration": (0, 1, 7),
    "PhotometricInterpretation": ("MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR", "", DELETE),
    "WindowCenter": (0, -1e308, 1e308, "", [1, 2], []),
    "WindowWidth": (0, -1, 1e-300, "", []),
    "RescaleSlope": (0, -1, 1e308, "", "nan"),
    "RescaleIntercept": (1e308, "", "inf"),
    "VOILUTSequence": ((), (4096, 0, 16), (1, 0, 2000), (0, 0, 8), (16, 0, 64)),  # LUTDescriptor of one item
    "PixelData": (DELETE, b"\x00\x00", b"\x00" * 7),
}


def _dicom_bytes(ds: Any, **encoding: Any) -> bytes:
    """``ds`` as a DICOM file, in its own transfer syntax, or in the ``encoding`` given (pydicom's
    ``force_encoding``: whatever the file meta claims)."""
    from pydicom import dcmwrite

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the very values written on purpose
        if encoding:
            dcmwrite(buffer, ds, **encoding, force_encoding=True)
        else:
            dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _set(ds: Any, name: str, value: Any) -> None:
    """Set ``ds.name`` to a :data:`DICOM_ATTRIBUTES` value (the VOI LUT's is its item's LUTDescriptor)."""
    from pydicom.dataset import Dataset

    if value is DELETE:
        if name in ds:
            delattr(ds, name)
    elif name == "VOILUTSequence":
        items = []
        if value:
            item = Dataset()
            item.LUTDescriptor = list(value)
            item.LUTData = np.arange(min(value[0], 4096), dtype=np.uint16).tobytes()
            items.append(item)
        ds.VOILUTSequence = items
    elif name == "PixelData" and ds.file_meta.TransferSyntaxUID.is_compressed:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([value])  # a compressed syntax's pixels are fragments in items
    else:
        setattr(ds, name, value)


def dicom_with(data: bytes, attributes: dict[str, Any]) -> bytes:
    """``data`` (a DICOM file) with ``attributes`` set (or removed), written in its own transfer syntax
    (re-deflated when deflated)."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, value in attributes.items():
            _set(ds, name, value)
    return _dicom_bytes(ds)


@st.composite
def dicom_attributes(draw: st.DrawFn, data: bytes) -> bytes:
    """A DICOM with one to three attributes rewritten from :data:`DICOM_ATTRIBUTES`."""
    names = draw(st.lists(st.sampled_from(sorted(DICOM_ATTRIBUTES)), min_size=1, max_size=3, unique=True))
    attributes = {name: draw(st.sampled_from(DICOM_ATTRIBUTES[name])) for name in names}
    note(f"DICOM attributes: { {name: 'deleted' if v is DELETE else v for name, v in attributes.items()} }")
    return dicom_with(data, attributes)


@st.composite
def dicom_syntax(draw: st.DrawFn, data: bytes) -> bytes:
    """A DICOM whose file meta claims another transfer syntax than its dataset is written in."""
    from pydicom import dcmread, uid

    ds = dcmread(io.BytesIO(data))
    claims = [uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian, uid.DeflatedExplicitVRLittleEndian, "1.2.3.4"]
    if ds.file_meta.TransferSyntaxUID.is_compressed:  # encapsulated pixels: another codec may be claimed
        claims += [uid.JPEGBaseline8Bit, uid.JPEG2000Lossless, uid.JPEGLSLossless, uid.ExplicitVRLittleEndian]
    ds.file_meta.TransferSyntaxUID = draw(st.sampled_from(claims))
    note(f"DICOM claiming transfer syntax {ds.file_meta.TransferSyntaxUID}")
    return _dicom_bytes(ds, implicit_vr=False, little_endian=True)


GENERIC = {"none": 6, "flip": 4, "truncate": 3, "insert": 2, "delete": 2}
MUTATIONS = {
    "png": GENERIC | {"png-header": 4},
    "png16": GENERIC | {"png-header": 3},
    "jpeg": GENERIC | {"jpeg-header": 3},
    "dicom": GENERIC | {"dicom-attributes": 6, "dicom-syntax": 2},
    "dicom-deflated": GENERIC | {"dicom-attributes": 4, "dicom-syntax": 1},
    "dicom-rle": GENERIC | {"dicom-attributes": 5, "dicom-syntax": 2},
}
MUTATE = {
    "flip": flipped,
    "truncate": truncated,
    "insert": inserted,
    "delete": deleted,
    "png-header": png_header,
    "jpeg-header": jpeg_header,
    "dicom-attributes": dicom_attributes,
    "dicom-syntax": dicom_syntax,
}


# --- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One request to the API: a multipart ``image`` part with form ``fields``, or a raw ``body``."""

    kind: str  # the seed kind, or what the body is ("empty", "multipart-cut", "form-only", ...)
    mutation: str
    endpoint: str
    fields: dict[str, str] = field(default_factory=dict)
    file: tuple[str, bytes, str] | None = None  # (file name, bytes, content type) of the image part
    body: bytes | None = None
    content_type: str | None = None  # the Content-Type of a raw body (None: no header)

    def __repr__(self) -> str:
        data = self.body if self.body is not None else self.file[1] if self.file else b""
        sent = f"file={self.file[0]!r} as {self.file[2]!r}" if self.file else f"content_type={self.content_type!r}"
        return (
            f"Upload({self.kind}/{self.mutation} to {self.endpoint}, fields={self.fields}, {sent}, "
            f"{len(data)} bytes starting {data[:160]!r})"
        )

    def send(self, client: httpx.Client) -> httpx.Response:
        """Send it with ``client`` (a TestClient, or an httpx client with a served app's base URL)."""
        if self.body is not None:
            headers = {} if self.content_type is None else {"Content-Type": self.content_type}
            return client.post(self.endpoint, content=self.body, headers=headers)
        return client.post(self.endpoint, files={"image": self.file} if self.file else None, data=self.fields)


FILE_NAMES = {
    "x-ray.png": 6,
    "scan.dcm": 3,
    "photo.jpg": 3,
    "notes.txt": 1,
    "../../etc/passwd": 1,
    "a" * 300 + ".png": 1,
    "名前.png": 1,
    'quote".png': 1,
    "semi;colon.dcm": 1,
}
CONTENT_TYPES = {
    "image/png": 4,
    "image/jpeg": 2,
    "application/dicom": 2,
    "application/octet-stream": 2,
    "text/plain": 1,
    "text/html; charset=utf-8": 1,
    "multipart/form-data": 1,
    "image/png; boundary=x": 1,
}
ODD_K = ("0", "-1", "101", "abc", "", "1.5", " 1", "9" * 30, "1e3")


@st.composite
def form_fields(draw: st.DrawFn, endpoint: str) -> dict[str, str]:
    """The form beside an image: mostly the cheapest valid one (search ``k=1``, diagnose without
    saliency), sometimes an odd ``k`` or ``saliency``, an unknown field, or a field that conflicts."""
    fields = {"k": "1"} if endpoint == "/v1/search" else {}
    if endpoint == "/v1/diagnose" and draw(weighted({False: 12, True: 1})):
        fields["saliency"] = draw(st.sampled_from(("true", "maybe", "")))
    if draw(weighted({False: 5, True: 1})):
        fields["k"] = draw(st.sampled_from(ODD_K))
    if draw(weighted({False: 5, True: 1})):
        extra = draw(st.sampled_from(("colour", "text", "case", "patient_id", "image_url", "k2")))
        fields[extra] = draw(st.sampled_from(("0", "x", "enlarged heart", "", "\x00\xff")))
    return fields


@st.composite
def image_uploads(draw: st.DrawFn, seeds: Seeds) -> Upload:
    """A seed, mutated or not, in a well-formed multipart body with a file name and content type."""
    kind = draw(st.sampled_from(sorted(seeds)))
    mutation = draw(weighted(MUTATIONS[kind]))
    data = seeds[kind] if mutation == "none" else draw(MUTATE[mutation](seeds[kind]))
    endpoint = draw(weighted({"/v1/search": 5, "/v1/diagnose": 1}))
    name, content_type = draw(weighted(FILE_NAMES)), draw(weighted(CONTENT_TYPES))
    return Upload(kind, mutation, endpoint, draw(form_fields(endpoint)), (name, data, content_type))


@st.composite
def empty_uploads(draw: st.DrawFn) -> Upload:
    """An image part of no bytes."""
    endpoint = draw(st.sampled_from(("/v1/search", "/v1/diagnose")))
    return Upload("empty", "none", endpoint, {}, (draw(weighted(FILE_NAMES)), b"", draw(weighted(CONTENT_TYPES))))


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = BOUNDARY, close: bool = True) -> bytes:
    """A multipart/form-data body of (part headers, content) pairs, closed unless ``close`` is false."""
    body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n" for head, content in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


def image_part(data: bytes, name: bytes = b"image", filename: bytes = b"x.png") -> tuple[bytes, bytes]:
    """A well-formed file part of :func:`multipart`."""
    head = b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"'
    return head + b"\r\nContent-Type: image/png", data


BAD_PART_HEADS = (
    b"nonsense",
    b"Content-Disposition: form-data",
    b'Content-Disposition: attachment; name="image"',
    b'Content-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type',
    b'Content-Disposition: form-data; name=""; filename="a"',
    b'Content-Disposition: form-data; name="image"; filename=""',
    b"\xff\xfe\x00",
    b"Content-Disposition: form-data; name=\"image\"; filename*=UTF-8''%FF.png",
    b'Content-Disposition: form-data; name="image"; filename="a\r\nb.png"',
)
MULTIPART = "multipart/form-data; boundary=" + BOUNDARY.decode()
BROKEN = {
    "multipart-cut": 6,
    "multipart-wrong-boundary": 2,
    "multipart-no-boundary": 2,
    "multipart-unclosed": 2,
    "multipart-garbage": 2,
    "multipart-bad-part-headers": 3,
    "multipart-empty": 1,
    "multipart-two-images": 1,
    "multipart-many-fields": 1,
    "multipart-long-header": 1,
    "not-multipart": 3,
}


@st.composite
def broken_bodies(draw: st.DrawFn, seeds: Seeds) -> Upload:
    """A raw body that is not a well-formed multipart form with one image."""
    endpoint = draw(weighted({"/v1/search": 3, "/v1/diagnose": 1}))
    data = seeds[draw(st.sampled_from(sorted(seeds)))]
    whole = multipart([image_part(data), (b'Content-Disposition: form-data; name="k"', b"1")])
    kind = draw(weighted(BROKEN))
    content_type: str | None = MULTIPART
    if kind == "multipart-cut":
        body = whole[: draw(st.integers(0, len(whole) - 1))]
    elif kind == "multipart-wrong-boundary":
        body = whole
        content_type = draw(st.sampled_from((MULTIPART + "x", "multipart/form-data; boundary=", MULTIPART[:-3])))
    elif kind == "multipart-no-boundary":
        body, content_type = whole, draw(st.sampled_from(("multipart/form-data", "multipart/mixed", "multipart/")))
    elif kind == "multipart-unclosed":
        body = multipart([image_part(data)], close=False)
    elif kind == "multipart-garbage":
        body = draw(st.binary(max_size=2048))
    elif kind == "multipart-bad-part-headers":
        body = multipart([(draw(st.sampled_from(BAD_PART_HEADS)), data)])
    elif kind == "multipart-empty":
        body = b""
    elif kind == "multipart-two-images":
        body = multipart([image_part(data), image_part(draw(truncated(data)), filename=b"y.png")])
    elif kind == "multipart-many-fields":
        count = draw(st.sampled_from((999, 1001, 3000)))
        body = multipart([(f'Content-Disposition: form-data; name="f{i}"'.encode(), b"1") for i in range(count)])
    elif kind == "multipart-long-header":
        body = multipart([(b"X-Padding: " + b"a" * draw(st.sampled_from((8_000, 70_000))), b"1"), image_part(data)])
    else:  # "not-multipart": an image or a form under another content type, or none
        body = draw(st.sampled_from((data, whole, b'{"k": 1}', b"k=1&text=")))
        content_type = draw(
            st.sampled_from(("application/json", "application/x-www-form-urlencoded", "text/plain", "image/png", None))
        )
    return Upload(kind, "none", endpoint, body=body, content_type=content_type)


@st.composite
def form_only(draw: st.DrawFn) -> Upload:
    """A form with no image: a mix of known and unknown fields (some of them a valid text or case query)."""
    endpoint = draw(weighted({"/v1/search": 3, "/v1/diagnose": 1}))
    names = ("text", "case", "k", "saliency", "patient_id", "image", "unknown")
    values = st.sampled_from(("", "1", "0", "x", "enlarged heart", "99999", "-1", "abc", "..%2F", "²"))
    fields = draw(st.dictionaries(st.sampled_from(names), values, max_size=4))
    return Upload("form-only", "none", endpoint, fields)


def uploads(seeds: Seeds) -> st.SearchStrategy[Upload]:
    """Any hostile request: mostly a mutated image (about 70%), else a broken body, a form without
    an image, or an empty file."""
    strategies = {
        "image": image_uploads(seeds),
        "broken": broken_bodies(seeds),
        "form": form_only(),
        "empty": empty_uploads(),
    }
    return weighted({"image": 14, "broken": 4, "form": 1, "empty": 1}).flatmap(strategies.__getitem__)
