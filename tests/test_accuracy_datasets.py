"""The generated sample dataset, COCO dataset loading, subsets, and class mapping."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness.accuracy.categories import check_mapping, class_mapping, name_key
from harness.accuracy.coco_names import COCO_CATEGORY_NAMES, coco80_class_names, coco91_class_names
from harness.accuracy.datasets import load_dataset, open_dataset, select_image_ids
from harness.accuracy.sample import make_sample_dataset, sample_dataset_dir
from harness.errors import UserError
from harness.plan.schema import DatasetSpec, SubsetSpec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_sample_dataset(tmp_path_factory.mktemp("s") / "sample", n_images=10, seed=0)


# -- the sample generator --------------------------------------------------------------------

def test_sample_is_byte_identical_across_runs(tmp_path: Path) -> None:
    a = make_sample_dataset(tmp_path / "a", n_images=6, seed=5)
    b = make_sample_dataset(tmp_path / "b", n_images=6, seed=5)
    c = make_sample_dataset(tmp_path / "c", n_images=6, seed=6)
    da, db, dc = (_tree_digest(p[0].parent) for p in (a, b, c))
    assert da == db
    assert len(da) == 7  # 6 JPEGs + instances.json
    assert da != dc  # the seed matters
    # Nothing left behind from the temporary folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_sample_is_valid_coco_for_pycocotools(sample: tuple[Path, Path]) -> None:
    from PIL import Image
    from pycocotools.coco import COCO

    images_dir, instances = sample
    coco = COCO(str(instances))
    assert len(coco.getImgIds()) == 10
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    # Real COCO ids and names, so COCO-trained models' classes map onto them.
    assert all(COCO_CATEGORY_NAMES[i] == name for i, name in cats.items())
    sizes = set()
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(images_dir / img["file_name"]) as im:
            assert im.format == "JPEG"
            assert im.size == (img["width"], img["height"])
            sizes.add(im.size)
            assert im.size[0] != im.size[1]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            mask = coco.annToMask(ann)
            x, y, w, h = ann["bbox"]
            # The polygon fills its box and its area matches the rasterised mask.
            assert mask.sum() == pytest.approx(ann["area"], rel=0.15, abs=40)
            assert 0 <= x and x + w <= img["width"] and 0 <= y and y + h <= img["height"]
            if cats[ann["category_id"]] == "person":
                assert ann["num_keypoints"] == 17 and len(ann["keypoints"]) == 51
    assert len(sizes) > 5  # varied sizes


def test_sample_dataset_dir_generates_once_and_reuses(tmp_path: Path) -> None:
    images_dir, instances = sample_dataset_dir(tmp_path, 3)
    assert images_dir.parent == tmp_path / "sample-3-0"
    before = instances.stat().st_mtime_ns
    assert sample_dataset_dir(tmp_path, 3) == (images_dir, instances)
    assert instances.stat().st_mtime_ns == before
    with pytest.raises(OSError):  # never writes over an existing dataset
        make_sample_dataset(tmp_path / "sample-3-0", 3)


# -- loading and subsets ---------------------------------------------------------------------

def test_load_dataset_sample_spec_and_subsets(tmp_path: Path) -> None:
    spec = DatasetSpec(sample=True, sample_images=7)
    ds = load_dataset(spec, tmp_path, tmp_path / "cache")
    assert len(ds.image_ids) == 7 and ds.image_ids == sorted(ds.image_ids)
    first = load_dataset(DatasetSpec(sample=True, sample_images=7, subset=SubsetSpec(mode="first", n=3)),
                         tmp_path, tmp_path / "cache")
    assert first.image_ids == ds.image_ids[:3]
    rand = [load_dataset(DatasetSpec(sample=True, sample_images=7, subset=SubsetSpec(mode="random", n=3, seed=s)),
                         tmp_path, tmp_path / "cache").image_ids for s in (0, 0, 1)]
    assert rand[0] == rand[1] and len(rand[0]) == 3 and set(rand[0]) <= set(ds.image_ids)
    assert rand[0] != rand[2]


def test_subset_does_not_depend_on_file_order(sample: tuple[Path, Path], tmp_path: Path) -> None:
    images_dir, instances = sample
    data = json.loads(instances.read_text())
    data["images"].reverse()
    data["annotations"].reverse()
    reversed_json = tmp_path / "reversed.json"
    reversed_json.write_text(json.dumps(data))
    for mode in ("all", "first", "random"):
        n = None if mode == "all" else 4
        a = open_dataset(images_dir, instances, mode, n, seed=3).image_ids
        b = open_dataset(images_dir, reversed_json, mode, n, seed=3).image_ids
        assert a == b, mode
    # A smaller random subset is part of a larger one with the same seed.
    ids = list(range(100, 200))
    assert set(select_image_ids(ids, "random", 10, 7)) <= set(select_image_ids(ids[::-1], "random", 30, 7))


def test_dataset_errors_name_the_field(sample: tuple[Path, Path], tmp_path: Path) -> None:
    images_dir, instances = sample
    with pytest.raises(UserError, match=r"dataset\.images: folder not found"):
        open_dataset(tmp_path / "nope", instances)
    with pytest.raises(UserError, match=r"dataset\.annotations: file not found"):
        open_dataset(images_dir, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        open_dataset(images_dir, bad)
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1, "category_id": 1}]))
    with pytest.raises(UserError, match="results file"):
        open_dataset(images_dir, bad)
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(UserError, match="no list `categories`"):
        open_dataset(images_dir, bad)
    with pytest.raises(UserError, match=r"dataset\.subset\.n: asks for 11 images but the dataset has 10"):
        open_dataset(images_dir, instances, "first", 11)
    data = json.loads(instances.read_text())
    data["annotations"][0]["category_id"] = 999
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"annotations\[0\] has category 999"):
        open_dataset(images_dir, bad)
    data = json.loads(instances.read_text())
    data["images"][0]["file_name"] = "missing.jpg"
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"dataset\.images: 1 image file\(s\).*missing\.jpg"):
        open_dataset(images_dir, bad)
    # A plan path resolves against the plan's folder.
    spec = DatasetSpec(images="imgs", annotations="ann.json")
    with pytest.raises(UserError, match=str(tmp_path / "imgs")):
        load_dataset(spec, tmp_path, tmp_path / "cache")


# -- class mapping ---------------------------------------------------------------------------

def test_coco_names_match_rfdetr() -> None:
    import importlib.util

    # Load rfdetr's table file alone: importing the rfdetr package pulls in torch (seconds).
    spec = importlib.util.find_spec("rfdetr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rfdetr is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "coco_classes.py"
    file_spec = importlib.util.spec_from_file_location("_rfdetr_coco_classes", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    assert COCO_CATEGORY_NAMES == module.COCO_CLASSES


def test_category_mapping_round_trip() -> None:
    coco91 = coco91_class_names()
    coco80 = coco80_class_names()
    coco_cats = [{"id": i, "name": n} for i, n in COCO_CATEGORY_NAMES.items()]
    # The same classes numbered 0..79 (a Roboflow-style export) with other spellings.
    contiguous_cats = [{"id": k, "name": n.upper().replace(" ", "_")} for k, n in enumerate(coco80)]

    # 91-id model on a COCO-id dataset: identity on the 80 real ids, nothing for the gaps.
    m = class_mapping(coco91, coco_cats)
    assert m == {i: i for i in COCO_CATEGORY_NAMES}
    # 91-id model on a contiguous dataset: COCO id -> position in the 80 list.
    m = class_mapping(coco91, contiguous_cats)
    assert m[1] == 0 and m[90] == 79 and m[13] == 11 and len(m) == 80
    # Contiguous model on a COCO-id dataset, and back through the other mapping.
    m80 = class_mapping(coco80, coco_cats)
    assert m80[0] == 1 and m80[79] == 90 and m80[11] == 13
    back = {cat: idx for idx, cat in class_mapping(coco91, coco_cats).items()}
    for index80, coco_id in m80.items():
        assert coco91[back[coco_id]] == coco80[index80]
    assert name_key("TV-Monitor") == name_key("tv") and name_key("Dining_Table") == name_key("dining table")


def test_unknown_classes_error_before_anything_runs() -> None:
    cats = [{"id": 1, "name": "hammer"}, {"id": 2, "name": "wrench"}]
    with pytest.raises(UserError, match="knows none of the dataset's classes: hammer, wrench"):
        check_mapping(coco91_class_names(), cats)
    # Partial overlap: evaluated on the known class, the other recorded as unevaluable.
    cats.append({"id": 7, "name": "person"})
    check = check_mapping(coco91_class_names(), cats)
    assert check.evaluated_category_ids == [7] and check.unevaluable == ["hammer", "wrench"]
    assert check.warning and "hammer" in check.warning
    # Categories without annotations do not count.
    check = check_mapping(coco91_class_names(), cats, annotated_category_ids={7})
    assert check.unevaluable == [] and check.warning is None
    with pytest.raises(UserError, match="ambiguous"):
        class_mapping(["person"], [{"id": 1, "name": "person"}, {"id": 2, "name": "Person"}])
