import pytest

from convirt.data.schema import Row
from convirt.data.views import normalize_view, parse_views, view_kept
from convirt.data.writer import write_shards
from tests.conftest import shaded_image


@pytest.mark.parametrize("view", ["PA", "AP", "AP Supine", "ap_horizontal", "Frontal", "PA LLD", "AP AXIAL"])
def test_frontal_group_keeps_the_archives_frontal_names(view):
    assert view_kept(view, parse_views(["frontal"]))


@pytest.mark.parametrize("view", ["L", "LATERAL", "LL", "Lateral", "COSTAL", "", "  "])
def test_frontal_group_leaves_out_lateral_other_and_unknown_views(view):
    assert not view_kept(view, parse_views(["frontal"]))


def test_named_views_match_after_normalising():
    keep = parse_views(["pa", "ap-supine"])
    assert normalize_view(" ap_Supine ") == "AP SUPINE"
    assert view_kept("PA", keep) and view_kept("AP Supine", keep)
    assert not view_kept("AP", keep) and not view_kept("LATERAL", keep)


def test_empty_view_names_are_refused():
    with pytest.raises(ValueError, match="frontal"):
        parse_views([])
    with pytest.raises(ValueError, match="empty"):
        parse_views(["PA", " "])


def test_shards_keep_only_the_named_views_and_count_the_rest(tmp_path):
    rows = []
    for i, view in enumerate(["PA", "AP Supine", "L", "", "AP"]):
        path = tmp_path / f"img{i}.png"
        shaded_image((32, 32), i * 40).save(path)
        rows.append(Row(key=f"k{i}", image_path=str(path), text=f"Report {i}.", patient_id=f"p{i}", view=view))
    manifest = write_shards(
        rows, tmp_path / "out", image_size=16, val_fraction=0, test_fraction=0, progress=False, views=["frontal"]
    )
    assert manifest["samples"] == 3
    assert manifest["dropped"] == {"view_excluded": 1, "view_unknown": 1}
    assert manifest["config"]["views"] == ["frontal"]
    every = write_shards(rows, tmp_path / "every", image_size=16, val_fraction=0, test_fraction=0, progress=False)
    assert every["samples"] == 5 and "views" not in every["config"]
    with pytest.raises(ValueError, match="views"):  # another setting into a finished folder is refused by name
        write_shards(rows, tmp_path / "out", image_size=16, val_fraction=0, test_fraction=0, progress=False)


def test_shards_command_takes_a_comma_list_of_views(tmp_path, capsys):
    from convirt.cli.main import main

    lines = ["image,text,patient_id,view"]
    for i, view in enumerate(["PA", "L", "AP"]):
        shaded_image((32, 32), i * 60).save(tmp_path / f"img{i}.png")
        lines.append(f"{tmp_path / f'img{i}.png'},Report {i}.,p{i},{view}")
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    argv = ["shards", "--input", str(tmp_path / "rows.csv"), "--image-size", "16", "--workers", "1"]
    assert main([*argv, "--output", str(tmp_path / "out"), "--views", "PA,AP"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    assert main([*argv, "--output", str(tmp_path / "none"), "--views", "LL"]) == 2
    assert "all dropped ({'view_excluded': 3})" in capsys.readouterr().err
