"""What a DICOM file's header says of the patient and the view, read without its pixels.

RSNA, SIIM and VinDr keep the patient's sex, age and id and the view nowhere but there
(:mod:`convirt.data.test_sets` reads them into rows).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from convirt.data.images import DICOM_DAMAGE, MAX_IMAGE_PIXELS, check_inflated_size, quiet_logger

# The header elements :func:`read_dicom_header` reads.
DEMOGRAPHIC_TAGS = ("PatientSex", "PatientAge", "ViewPosition")  # (0010,0040), (0010,1010), (0018,5101)
HEADER_TAGS = (*DEMOGRAPHIC_TAGS, "PatientID")  # (0010,0020)
# CS values hold at most 16 characters, AS values 4 and LO values (PatientID) 64: a longer one is damage.
_HEADER_VALUE_MAX = 16
_PATIENT_ID_MAX = 64


@dataclass(frozen=True)
class DicomHeader:
    """What :func:`read_dicom_header` keeps of a DICOM header, as the file writes it, stripped; ``""``
    where absent, empty, too long to be a value, or where the file is missing, not DICOM or damaged.

    Attributes:
        sex: ``PatientSex`` (``"M"``).
        age: ``PatientAge`` (``"063Y"``; some archives write ``"51"``).
        view: ``ViewPosition`` (``"PA"``).
        patient_id: ``PatientID``: several images of one patient share it.
    """

    sex: str = ""
    age: str = ""
    view: str = ""
    patient_id: str = ""


# Cost: about 0.34 ms a file, 9 s for 27,000 (2,000 reads through test_sets._rows_by_image of a 512x512 16-bit
# file, warm page cache, AMD EPYC, one of two busy cores); a fifth of it is the deflate check's read of the
# file meta, the rest pydicom's header read. A cold archive adds one small disk read a file.
def read_dicom_header(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> DicomHeader:
    """The patient's sex, age and id and the view of a DICOM file, read from its header alone, in one read.

    Only the elements of :data:`HEADER_TAGS` are kept, and reading stops before the pixel data.
    A deflated file is first checked not to inflate past what :func:`load_dicom` accepts (pydicom
    inflates the whole dataset before it reads the header).

    Returns:
        The values (see :class:`DicomHeader`); a multi-valued element joined with ``\\`` as DICOM
        writes it. All are ``""`` when the file is missing, not DICOM or damaged: the image reader
        reports such a file when it decodes it.
    """
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        # A truncated file's warning, logged per file, and an over-long value's (read as "" here).
        with quiet_logger("pydicom"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            check_inflated_size(path, 2 * max_pixels + (16 << 20))  # load_dicom's limit
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
            sex, age, view = (_header_text(header.get(keyword)) for keyword in DEMOGRAPHIC_TAGS)
            patient_id = _header_text(header.get("PatientID"), _PATIENT_ID_MAX)
    except (InvalidDicomError, BytesLengthException, OSError) + DICOM_DAMAGE:  # RefusedImageError: a ValueError
        return DicomHeader()
    return DicomHeader(sex, age, view, patient_id)


def dicom_demographics(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[str, str, str]:
    """``(sex, age, view)`` of a DICOM file's header (:func:`read_dicom_header`): ``("M", "063Y", "PA")``."""
    header = read_dicom_header(path, max_pixels)
    return header.sex, header.age, header.view


def _header_text(value: object, limit: int = _HEADER_VALUE_MAX) -> str:
    """A header element's value as stripped text; ``""`` when absent, empty or longer than ``limit``."""
    if value is None:
        return ""
    if isinstance(value, bytes):  # an element stored as UN
        value = value.decode("ascii", "replace")
    elif isinstance(value, Sequence) and not isinstance(value, str):  # pydicom's MultiValue
        value = "\\".join(str(item).strip() for item in value)
    text = str(value).strip(" \x00")
    return text if len(text) <= limit else ""
