"""The folder dataset: layouts, mask encodings and bad input on generated folders, and the real
Stanford Background files read through it with no code of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arseg.data import DatasetError, build_dataset, build_train_transform
from arseg.data.base import read_label

from ..conftest import write_folder_dataset

CLASSES = ["sky", "tree", "road"]


def make_folder(
    root: Path,
    sizes=((12, 16), (10, 14), (16, 12)),
    split: str = "val",
    img_ext: str = ".jpg",
    values=(0, 1, 2, 255),
    classes_txt: bool = True,
) -> list[np.ndarray]:
    """The default layout: images/{split}/iNN.jpg, masks/{split}/iNN.png (mode L), classes.txt
    (with a trailing blank line, which is skipped). Returns the masks written."""
    masks = write_folder_dataset(
        root, {split: list(sizes)}, img_ext=img_ext, values=values, name_format="i{i:02d}"
    )
    if classes_txt:
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n\n")
    return masks[split]


def test_default_layout_reads_every_image_with_its_mask(tmp_path):
    masks = make_folder(tmp_path)
    ds = build_dataset("folder", root=tmp_path, split="val")
    assert len(ds) == 3 and ds.classes == tuple(CLASSES) and ds.num_classes == 3
    assert len(ds.palette) == 3 and ds.ignore_index == 255 and ds.list_file is None
    for i, mask in enumerate(masks):
        image, target = ds[i]
        assert image.shape == (3, *mask.shape) and image.dtype == torch.float32
        assert np.array_equal(target.numpy(), mask) and target.dtype == torch.int64
        assert ds.image_size(i) == mask.shape
    assert ds.sample_name(1) == "i01"


def test_list_file_names_with_or_without_extension(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "val.txt").write_text("i02.jpg\n\ni00\ni01.png\n")  # i01.png: its mask's name
    ds = build_dataset("folder", root=tmp_path, split="val", img_suffix=".jpg")
    assert [ds.sample_name(i) for i in range(len(ds))] == ["i02", "i00", "i01"]  # the list's order
    assert ds.list_file == tmp_path / "val.txt"
    (tmp_path / "val.txt").write_text("i00\ni07\n")
    with pytest.raises(FileNotFoundError, match=r"val\.txt line 2 names 'i07' but no image"):
        build_dataset("folder", root=tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match=r"list file .*lists/val\.lst"):
        build_dataset("folder", root=tmp_path, split="val", list_file="lists/{split}.lst")
    # list_file given explicitly, in another folder
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.lst").write_text("i01\n")
    ds = build_dataset("folder", root=tmp_path, split="val", list_file="lists/{split}.lst")
    assert len(ds) == 1


def test_a_list_file_matches_suffixes_case_insensitively_as_the_scan_does(tmp_path):
    make_folder(tmp_path, img_ext=".JPG")
    (tmp_path / "masks" / "val" / "i02.png").rename(tmp_path / "masks" / "val" / "i02.PNG")
    scanned = build_dataset("folder", root=tmp_path, split="val")
    assert [p[0].name for p in scanned.pairs] == ["i00.JPG", "i01.JPG", "i02.JPG"]
    (tmp_path / "val.txt").write_text("i02\ni00.JPG\ni01.jpg\n")
    listed = build_dataset("folder", root=tmp_path, split="val")
    assert [p[0].name for p in listed.pairs] == ["i02.JPG", "i00.JPG", "i01.JPG"]
    assert [p[1].name for p in listed.pairs] == ["i02.PNG", "i00.png", "i01.png"]
    (tmp_path / "val.txt").write_text("I00\n")  # the name itself is matched exactly
    with pytest.raises(FileNotFoundError, match="names 'I00' but no image"):
        build_dataset("folder", root=tmp_path, split="val")


def test_custom_dirs_suffixes_and_subfolders(tmp_path):
    # Cityscapes-like names: city sub-folders, suffixes that carry more than the extension
    rng = np.random.default_rng(1)
    for city in ("aachen", "bonn"):
        (tmp_path / "left" / "train" / city).mkdir(parents=True)
        (tmp_path / "gt" / "train" / city).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "left" / "train" / city / f"{city}_1_leftImg8bit.png"
        )
        Image.fromarray(np.full((8, 8), 1, np.uint8)).save(
            tmp_path / "gt" / "train" / city / f"{city}_1_gtFine_labelTrainIds.png"
        )
    (tmp_path / "left" / "train" / "notes.txt").write_text("not an image")
    options = {
        "img_dir": "left/{split}",
        "ann_dir": "gt/{split}",
        "img_suffix": "_leftImg8bit.png",
        "seg_map_suffix": "_gtFine_labelTrainIds.png",
        "classes": ["a", "b"],
    }
    ds = build_dataset("folder", root=tmp_path, split="train", **options)
    assert len(ds) == 2 and ds.pairs[1][1].name == "bonn_1_gtFine_labelTrainIds.png"
    assert [ds.sample_name(i) for i in range(2)] == ["aachen/aachen_1", "bonn/bonn_1"]


def test_equal_file_names_in_sub_folders_get_distinct_sample_names(tmp_path):
    for sub in ("day", "night"):
        for folder in ("images", "masks"):
            (tmp_path / folder / "val" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(
            tmp_path / "images/val" / sub / "0001.jpg"
        )
        Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "masks/val" / sub / "0001.png")
    ds = build_dataset("folder", root=tmp_path, split="val", classes=["a"])
    names = [ds.sample_name(i) for i in range(len(ds))]
    assert names == ["day/0001", "night/0001"]  # the stems alone would collide in metrics.json


def test_classes_from_the_config_and_from_the_file(tmp_path):
    make_folder(tmp_path, classes_txt=False)
    with pytest.raises(FileNotFoundError, match=r"no classes: set data\.options\.classes"):
        build_dataset("folder", root=tmp_path, split="val")
    ds = build_dataset("folder", root=tmp_path, split="val", classes=["a", "b", "c", "d"])
    assert ds.num_classes == 4
    with pytest.raises(ValueError, match=r"names \['a'\] more than once"):
        build_dataset("folder", root=tmp_path, split="val", classes=["a", "b", "a"])
    (tmp_path / "labels.txt").write_text("x\ny\nz\n")
    ds = build_dataset("folder", root=tmp_path, split="val", classes_file="labels.txt")
    assert ds.classes == ("x", "y", "z")


def test_a_value_neither_class_nor_ignored_names_the_file(tmp_path):
    make_folder(tmp_path, values=(0, 1, 2, 3))  # 3 classes: value 3 is out of range
    ds = build_dataset("folder", root=tmp_path, split="val")
    with pytest.raises(DatasetError, match=r"masks/val/i00\.png has values \[3\]"):
        ds.load(0)


def test_ignore_index_and_reduce_zero_label_as_mmseg(tmp_path):
    masks = make_folder(tmp_path, values=(0, 1, 2, 3, 255))
    # values 1..3 are classes 0..2, 0 is unlabelled (mmseg: 0 -> 255, k -> k - 1, 255 stays)
    ds = build_dataset("folder", root=tmp_path, split="val", reduce_zero_label=True)
    _, target = ds[0]
    expected = np.where((masks[0] == 0) | (masks[0] == 255), 255, masks[0].astype(int) - 1)
    assert np.array_equal(target.numpy(), expected)
    # an ignore value of the user's: 3 here; 255 stays ignored
    ds = build_dataset("folder", root=tmp_path, split="val", ignore_index=3)
    _, target = ds[1]
    assert np.array_equal(target.numpy(), np.where(masks[1] == 3, 255, masks[1]))
    with pytest.raises(ValueError, match="ignore_index 1 is also the mask value of class 'tree'"):
        build_dataset("folder", root=tmp_path, split="val", ignore_index=1)
    with pytest.raises(ValueError, match="class k is value k \\+ 1"):
        build_dataset("folder", root=tmp_path, split="val", ignore_index=3, reduce_zero_label=True)


def test_palette_png_masks_give_their_indices(tmp_path):
    make_folder(tmp_path)
    path = tmp_path / "masks" / "val" / "i00.png"
    indices = np.array(Image.open(path))
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [7, 7, 7] * 253)  # colours of no meaning
    mask.save(path)
    assert Image.open(path).mode == "P"
    _, target = build_dataset("folder", root=tmp_path, split="val")[0]
    assert np.array_equal(target.numpy(), indices)


def _rgb_folder(root: Path, colors, extra=None) -> np.ndarray:
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    labels = np.array([[0, 1, 2, 3], [2, 1, 0, 3]], dtype=np.uint8)  # 3 = the ignore colour
    rgb = np.asarray([*colors, (0, 0, 0)], dtype=np.uint8)[labels]
    if extra is not None:
        rgb[extra[0]] = extra[1]
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "images" / "train" / "a.png")
    Image.fromarray(rgb).save(root / "masks" / "train" / "a.png")
    return np.where(labels == 3, 255, labels)


def test_rgb_masks_through_the_colour_table(tmp_path):
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    expected = _rgb_folder(tmp_path, colors)
    options = {"classes": CLASSES, "mask_colors": colors, "ignore_colors": [[0, 0, 0]]}
    ds = build_dataset("folder", root=tmp_path, split="train", **options)
    assert np.array_equal(ds[0][1].numpy(), expected)
    assert ds.palette == colors  # the display colours default to the mask colours
    # without the table an RGB mask is refused, and the error says what to set
    with pytest.raises(DatasetError, match=r"single-channel.*data\.options\.mask_colors"):
        build_dataset("folder", root=tmp_path, split="train", classes=CLASSES)[0]
    # a colour missing from the table: the file, the colour and where it is
    _rgb_folder(tmp_path / "b", colors, extra=((1, 2), (9, 9, 9)))
    ds = build_dataset("folder", root=tmp_path / "b", split="train", **options)
    with pytest.raises(
        DatasetError, match=r"a\.png: colour \[9, 9, 9\] \(e\.g\. at row 1, column 2\)"
    ):
        ds[0]
    with pytest.raises(ValueError, match="mask_colors has 2 colours for 3 classes"):
        build_dataset(
            "folder", root=tmp_path, split="train", classes=CLASSES, mask_colors=colors[:2]
        )


def test_image_without_mask_mask_without_image_and_empty_split(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "masks" / "val" / "i01.png").rename(tmp_path / "masks" / "val" / "x.png")
    with pytest.raises(
        DatasetError,
        match=r"image .*images/val/i01\.jpg has no mask: expected .*masks/val/i01\.png",
    ):
        build_dataset("folder", root=tmp_path, split="val")
    Image.fromarray(np.zeros((10, 14), np.uint8)).save(tmp_path / "masks" / "val" / "i01.png")
    with pytest.raises(
        DatasetError, match=r"mask .*masks/val/x\.png has no image: expected .*images/val/x\{\.jpg"
    ):
        build_dataset("folder", root=tmp_path, split="val")
    (tmp_path / "images" / "train").mkdir()
    (tmp_path / "masks" / "train").mkdir()
    with pytest.raises(DatasetError, match=r"split 'train' is empty"):
        build_dataset("folder", root=tmp_path, split="train")
    with pytest.raises(
        FileNotFoundError, match=r"image folder .*images/test for split 'test' not found"
    ):
        build_dataset("folder", root=tmp_path, split="test")


@pytest.mark.parametrize(
    ("img_suffix", "seg_map_suffix"), [(".png", "_mask.png"), ("_img.png", ".png")]
)
def test_images_and_masks_in_one_folder_told_apart_by_the_longer_suffix(
    tmp_path, img_suffix, seg_map_suffix
):
    folder = tmp_path / "all"
    folder.mkdir()
    masks = {}
    for i, name in enumerate(("a", "b")):
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(folder / f"{name}{img_suffix}")
        masks[name] = np.full((6, 8), i, np.uint8)
        Image.fromarray(masks[name]).save(folder / f"{name}{seg_map_suffix}")
    options = {"img_dir": "all", "ann_dir": "all", "classes": ["x", "y"]}
    options.update(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix)
    scanned = build_dataset("folder", root=tmp_path, split="val", **options)
    assert [(p[0].name, p[1].name) for p in scanned.pairs] == [
        (f"{n}{img_suffix}", f"{n}{seg_map_suffix}") for n in ("a", "b")
    ]
    assert [scanned.sample_name(i) for i in range(2)] == ["a", "b"]
    for i, name in enumerate(("a", "b")):
        assert np.array_equal(scanned[i][1].numpy(), masks[name])
    # a list may name an entry by its image, its mask or its bare name
    (tmp_path / "val.txt").write_text(f"b{seg_map_suffix}\na{img_suffix}\nb\n")
    listed = build_dataset("folder", root=tmp_path, split="val", **options)
    assert [p[1].name for p in listed.pairs] == [f"{n}{seg_map_suffix}" for n in "bab"]
    assert [p[0].name for p in listed.pairs] == [f"{n}{img_suffix}" for n in "bab"]


def test_size_mismatch_and_unreadable_files_are_named(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "val" / "i02.png")
    (tmp_path / "images" / "val" / "i01.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    ds = build_dataset("folder", root=tmp_path, split="val")
    ds[0]
    with pytest.raises(DatasetError, match=r"images/val/i01\.jpg.*not a readable image"):
        ds[1]
    with pytest.raises(
        DatasetError, match=r"size mismatch.*i02\.jpg is 16x12 but label .*i02\.png is 5x5"
    ):
        ds[2]


def test_training_crops_pad_small_and_portrait_images_with_ignore(tmp_path):
    make_folder(tmp_path, sizes=((12, 16), (16, 12)), values=(0, 1, 2))  # no ignored pixel
    ds = build_dataset(
        "folder",
        root=tmp_path,
        split="val",
        transform=build_train_transform(crop_size=(12, 16), scale_range=None, hflip=False),
    )
    _, target = ds[0]  # the crop's size: nothing padded
    assert (target != 255).all()
    _, target = ds[1]  # portrait 16x12 into a 12x16 crop: 4 columns of padding
    assert target.shape == (12, 16) and int((target == 255).sum()) == 12 * 4


# ---------------------------------------------------------------- the real data


def test_real_stanford_background_through_the_folder_dataset(stanford_dir):
    counts = {"train": 500, "val": 107}
    for split, count in counts.items():
        ds = build_dataset("folder", root=stanford_dir, split=split)
        assert len(ds) == count and ds.list_file == stanford_dir / f"{split}.txt"
        assert ds.classes == (
            "sky", "tree", "road", "grass", "water", "building", "mountain", "foreground",
        )  # fmt: skip
    # val: sizes vary (some portrait), masks hold 0..7 and 255, every sample checks out
    sizes, values, with_class = set(), set(), np.zeros(256, dtype=int)
    for i in range(len(ds)):
        _, target = ds.load(i)
        sizes.add(target.shape)
        present = np.unique(target)
        values |= set(present.tolist())
        with_class[present] += 1
    assert len(sizes) > 5 and (240, 320) in sizes and (320, 240) in sizes
    assert values <= {*range(8), 255}
    assert with_class[6] == 19 and with_class[4] == 24  # mountain, water: as the data's README
    raw = read_label(ds.pairs[0][1])
    assert raw.dtype == np.uint8


def test_real_stanford_background_loader_crops_every_size(stanford_dir):
    ds = build_dataset(
        "folder",
        root=stanford_dir,
        split="train",
        transform=build_train_transform(crop_size=(240, 320), scale_range=(0.75, 1.5)),
    )
    portrait = next(i for i in range(len(ds)) if ds.image_size(i)[0] > ds.image_size(i)[1])
    torch.manual_seed(0)
    image, target = ds[portrait]
    assert image.shape == (3, 240, 320) and target.shape == (240, 320)
    assert set(target.unique().tolist()) <= {*range(8), 255}


def test_an_unknown_option_lists_the_valid_ones(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(
        ValueError, match=r"folder: unknown option 'img_dirr'; valid options: img_dir"
    ):
        build_dataset("folder", root=tmp_path, split="val", img_dirr="x")


def test_seg_map_suffix_is_one_suffix_not_a_list_of_which_one_is_read(tmp_path):
    make_folder(tmp_path)
    assert build_dataset("folder", root=tmp_path, split="val", seg_map_suffix=[".png"])
    with pytest.raises(ValueError, match=r"seg_map_suffix must be one suffix, got \['_m.png'"):
        build_dataset("folder", root=tmp_path, split="val", seg_map_suffix=["_m.png", ".png"])


def test_rgb_masks_refuse_the_options_of_index_masks(tmp_path):
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    _rgb_folder(tmp_path, colors)
    options = {"classes": CLASSES, "mask_colors": colors, "ignore_colors": [[0, 0, 0]]}
    for extra in ({"reduce_zero_label": True}, {"ignore_index": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(extra))} .*mask values.*ignore_colors"):
            build_dataset("folder", root=tmp_path, split="train", **options, **extra)
