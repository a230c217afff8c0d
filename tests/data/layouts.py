"""Miniature copies of the layouts public data sets ship (Oxford-IIIT Pet, CUB-200-2011, Waterbirds), for the
importer tests: the same files and folders, a few small images each, nothing downloaded."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

#: Pet breeds of the miniature: (name, species 1 = cat / 2 = dog, class id).
PET_BREEDS = (("Abyssinian", 1, 1), ("american_bulldog", 2, 2))


def _object_image(rng: np.random.Generator, h: int, w: int, box: tuple[int, int, int, int], colour: int,
                  background: int = 60) -> np.ndarray:
    """An RGB image: noisy background, a bright object inside ``box`` (x0, y0, x1, y1) whose colour codes the class."""
    img = rng.uniform(0, background, (h, w, 3))
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1, colour % 3] = 230
    img[y0:y1, x0:x1, (colour + 1) % 3] = 120
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pet(root: Path, per_breed: int = 6, test_per_breed: int = 2, seed: int = 0) -> Path:
    """``images/<Breed>_<n>.jpg``, ``annotations/trimaps/<Breed>_<n>.png`` (1 pet, 2 background, 3 border),
    ``annotations/trainval.txt`` and ``test.txt`` (``name class species breed``), as the Pet archive ships them.
    Image sizes differ (as in the real set)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    listings = {"trainval.txt": [], "test.txt": []}
    for name, species, class_id in PET_BREEDS:
        for n in range(1, per_breed + test_per_breed + 1):
            h, w = 20 + n % 3, 24 + 2 * (n % 2)
            box = (6, 5, 18, 16)
            stem = f"{name}_{n}"
            Image.fromarray(_object_image(rng, h, w, box, class_id)).save(root / "images" / f"{stem}.jpg",
                                                                         quality=95)
            trimap = np.full((h, w), 2, dtype=np.uint8)
            x0, y0, x1, y1 = box
            trimap[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = 3
            trimap[y0:y1, x0:x1] = 1
            Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{stem}.png")
            listing = "trainval.txt" if n <= per_breed else "test.txt"
            listings[listing].append(f"{stem} {class_id} {species} {class_id}")
    for listing, lines in listings.items():
        (root / "annotations" / listing).write_text("\n".join(lines) + "\n")
    return root


#: CUB classes of the miniature (id, folder name).
CUB_CLASSES = ((1, "001.Black_footed_Albatross"), (2, "002.Laysan_Albatross"))


def write_cub(root: Path, per_class: int = 6, test_per_class: int = 2, seed: int = 0,
              segmentations: bool = True) -> Path:
    """``CUB_200_2011``: ``images/<class>/<name>.jpg``, ``images.txt``, ``image_class_labels.txt``,
    ``train_test_split.txt``, ``bounding_boxes.txt`` (x y width height), ``classes.txt``, and beside it (as the
    separate archive unpacks) ``segmentations/<class>/<name>.png``, soft grey masks."""
    rng = np.random.default_rng(seed)
    files = {name: [] for name in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
    image_id = 0
    for class_id, folder in CUB_CLASSES:
        (root / "images" / folder).mkdir(parents=True)
        for n in range(per_class + test_per_class):
            image_id += 1
            h, w = 22, 26
            box = (4 + n % 3, 5, 20, 17)
            name = f"{folder.split('.', 1)[1]}_{n:04d}_{image_id}.jpg"
            Image.fromarray(_object_image(rng, h, w, box, class_id)).save(root / "images" / folder / name,
                                                                         quality=95)
            if segmentations:
                seg = np.zeros((h, w), dtype=np.uint8)
                x0, y0, x1, y1 = box
                seg[y0:y1, x0:x1] = 255
                seg[y0:y1, x0] = 100  # soft edge
                path = root.parent / "segmentations" / folder / name.replace(".jpg", ".png")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(seg).save(path)
            files["images"].append(f"{image_id} {folder}/{name}")
            files["image_class_labels"].append(f"{image_id} {class_id}")
            files["train_test_split"].append(f"{image_id} {1 if n < per_class else 0}")
            x0, y0, x1, y1 = box
            files["bounding_boxes"].append(f"{image_id} {x0}.0 {y0}.0 {x1 - x0}.0 {y1 - y0}.0")
    for name, lines in files.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i} {f}" for i, f in CUB_CLASSES) + "\n")
    return root


def write_waterbirds(root: Path, segmentations: Path, per_group: dict[str, int] | None = None,
                     seed: int = 0) -> Path:
    """``waterbird_complete95_forest2water2``: ``metadata.csv`` (img_id, img_filename, y, split, place,
    place_filename) and the images at ``img_filename``; CUB-style segmentations written to ``segmentations``.
    The background (place) is bright green for land and blue for water; in train, most birds sit on their own
    place."""
    rng = np.random.default_rng(seed)
    counts = per_group or {"train": 6, "val": 2, "test": 2}
    rows = []
    image_id = 0
    for split_code, split in enumerate(("train", "val", "test")):
        for y in (0, 1):
            folder = ("001.Black_footed_Albatross" if y else "002.Landbird_Sparrow")
            for n in range(counts[split]):
                image_id += 1
                place = y if (split == "train" and n < counts[split] - 1) else (n + y) % 2
                h, w = 20, 20
                img = np.zeros((h, w, 3), dtype=np.uint8)
                img[..., 2 if place else 1] = 180
                img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
                img[6:14, 6:14] = (230, 230 * y, 60)
                name = f"{folder}/bird_{image_id:04d}.jpg"
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / name, quality=95)
                seg = np.zeros((h, w), dtype=np.uint8)
                seg[6:14, 6:14] = 255
                seg_path = segmentations / name.replace(".jpg", ".png")
                seg_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(seg).save(seg_path)
                rows.append({"img_id": image_id, "img_filename": name, "y": y, "split": split_code,
                             "place": place, "place_filename": f"/b/bamboo_forest/{image_id:08d}.jpg"})
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
