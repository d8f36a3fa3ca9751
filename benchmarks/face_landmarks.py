"""The face pipeline's 68-point landmark stage measured on human annotations (300-W's AFW: 337 faces in
185 photos, ../shared/data/face_landmarks_68/afw_300w).

NME = mean point-to-point error / distance between the outer eye corners (points 36 and 45, 0-based);
failure = NME > 0.10. An annotated face is *found* by a detector when one of its faces overlaps the box of
the annotated points with IoU >= 0.3 (the best-overlapping face is used). Measured with the project's own
stage functions (studykit.preprocessing.faces):

- `dlib_reference`: dlib's HOG detector + dlib's predictor (what the predictor was trained with);
- pipeline variants, all on MTCNN's faces: the image the predictor runs on (raw / enhanced) x the box it
  starts from (dlib's detection overlapping the MTCNN box with the raw-box or mapped-box fallback, the
  fitted mapping always, the raw MTCNN box);
- face selection policies for one face per photo, scored on which photo's chosen face is an annotated one
  (`wrong_face_rate`: photos whose chosen face is none of the annotated faces), and `all` (every face kept).

The MTCNN -> dlib box mapping is fitted on JAFFE (213 photos, faces where both detectors agree), not on
AFW, and written to the results with how it was fitted (the numbers in conf/data/*.yaml come from there).

    python benchmarks/face_landmarks.py                       # all 185 photos -> benchmarks/results/face_landmarks.json
    python benchmarks/face_landmarks.py --limit 10 --results /tmp/fl.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from common import DATA_ROOT, ROOT, machine, save_results
from studykit.data.images import read_rgb
from studykit.preprocessing.detection import FACE_SELECTION, mtcnn_detect, select_faces
from studykit.preprocessing.dlib68 import dlib_detect, dlib_points, fit_box_mapping, iou, predictor_box, predictor_path
from studykit.preprocessing.faces import clahe_unsharp

RESULTS = ROOT / "benchmarks" / "results" / "face_landmarks.json"
PLOT = ROOT / "benchmarks" / "results" / "face_landmarks_ced.png"
MATCH_IOU = 0.3
FAILURE_NME = 0.10
# the pipeline's configured enhancement (conf/data/jaffe.yaml)
ENHANCE = {"clip_limit": 2.0, "tile_grid": 8, "amount": 1.0, "radius": 2.0}
# (name, image, box, fallback)
VARIANTS = [
    ("enhanced_refine_mtcnn_fallback", "enhanced", "refine", "mtcnn"),  # predictor on the enhanced image
    ("raw_refine_mtcnn_fallback", "raw", "refine", "mtcnn"),
    ("raw_refine_mapped_fallback", "raw", "refine", "mapped"),
    ("raw_mapped", "raw", "mapped", "mapped"),
    ("raw_mtcnn_box", "raw", "mtcnn", "mtcnn"),
]


def read_afw(folder: Path, limit: int | None) -> dict[str, list[tuple[str, np.ndarray]]]:
    """photo id -> [(face name, (68, 2) 0-based points)], from <photo>_<k>.pts (1-based x y lines)."""
    photos: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for pts in sorted(folder.glob("*.pts")):
        values = np.asarray(pts.read_text().split(), dtype=np.float64)
        if values.size != 136:
            raise ValueError(f"{pts}: expected 68 'x y' lines, got {values.size} numbers")
        photos[pts.stem.rsplit("_", 1)[0]].append((pts.stem, values.reshape(68, 2) - 1.0))
    ids = sorted(photos)[:limit] if limit else sorted(photos)
    return {i: photos[i] for i in ids}


def points_box(points: np.ndarray) -> np.ndarray:
    return np.array([*points.min(0), *points.max(0)], dtype=np.float32)


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45]))


def match(boxes: list[np.ndarray], target: np.ndarray) -> int | None:
    """Index of the box that overlaps the annotated face best, if IoU >= MATCH_IOU."""
    scores = [iou(b, target) for b in boxes]
    best = int(np.argmax(scores)) if scores else None
    return best if best is not None and scores[best] >= MATCH_IOU else None


def fit_on_jaffe(mtcnn, hog, jaffe: Path) -> dict:
    """MTCNN -> dlib box mapping from the JAFFE photos where both detectors find the face (IoU > 0.3)."""
    pairs_m, pairs_d = [], []
    files = sorted(jaffe.glob("*.tiff"))
    for path in files:
        image = read_rgb(path)
        boxes, probs = mtcnn_detect(mtcnn, image)
        if len(boxes) == 0:
            continue
        m = boxes[int(np.argmax(probs))]
        found = dlib_detect(hog, cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 1)
        best = max(found, key=lambda d: iou(d, m), default=None)
        if best is not None and iou(best, m) > 0.3:
            pairs_m.append(m), pairs_d.append(best)
    mapping = fit_box_mapping(np.array(pairs_m), np.array(pairs_d))
    return {"mapping": {k: round(v, 4) for k, v in mapping.items()}, "fitted_on": f"JAFFE ({jaffe})",
            "photos": len(files), "pairs": len(pairs_m),
            "rule": "most confident MTCNN face vs dlib HOG detection (upsample 1) with IoU > 0.3; median of centre shift / size ratio"}


def summarize(errors: list[float], n_faces: int) -> dict:
    e = np.array(errors)
    return {"found": int(len(e)), "detection_rate": len(e) / n_faces,
            "nme_mean": float(e.mean()) if len(e) else None, "nme_median": float(np.median(e)) if len(e) else None,
            "failure_rate_found": float((e > FAILURE_NME).mean()) if len(e) else None,
            "failures": int((e > FAILURE_NME).sum()), "failure_rate_annotated": float((e > FAILURE_NME).sum() / n_faces)}


def ced_plot(curves: dict[str, list[float]], n_faces: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    grid = np.linspace(0, 0.15, 301)
    for name, errors in curves.items():
        e = np.sort(np.array(errors))
        ax.plot(grid, [np.sum(e <= g) / n_faces for g in grid], label=name)
    ax.axvline(FAILURE_NME, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("NME (inter-ocular)")
    ax.set_ylabel(f"fraction of the {n_faces} annotated faces")
    ax.set_title("AFW (300-W): cumulative error of the 68-point stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path(DATA_ROOT))
    parser.add_argument("--limit", type=int, default=None, help="first N photos only")
    parser.add_argument("--max-side", type=int, default=None, help="detectors run on the photo shrunk to this long side")
    parser.add_argument("--min-probability", type=float, default=0.9)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()

    import dlib
    from facenet_pytorch import MTCNN

    data_root = args.data_root.resolve()
    afw = read_afw(data_root / "face_landmarks_68" / "afw_300w", args.limit)
    n_faces = sum(len(v) for v in afw.values())
    mtcnn = MTCNN(keep_all=True, min_face_size=20, device="cpu")
    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(predictor_path(None)))
    fit = fit_on_jaffe(mtcnn, hog, data_root / "jaffe" / "jaffe_db")
    mapping = fit["mapping"]
    print("box mapping", fit, flush=True)

    seconds = defaultdict(float)
    reference: dict[str, float] = {}  # face name -> NME
    variant_errors: dict[str, dict[str, float]] = {v[0]: {} for v in VARIANTS}
    box_sources: dict[str, dict[str, int]] = {v[0]: defaultdict(int) for v in VARIANTS}
    mtcnn_found = 0
    policy_wrong = {p: 0 for p in FACE_SELECTION if p != "all"}
    policy_found = {p: 0 for p in FACE_SELECTION if p != "all"}
    all_faces_wrong = 0
    photos_with_face = 0
    for photo, faces in afw.items():
        t = time.perf_counter()
        image = read_rgb(data_root / "face_landmarks_68" / "afw_300w" / f"{faces[0][0]}.jpg")
        seconds["read"] += time.perf_counter() - t
        t = time.perf_counter()
        boxes, probs = mtcnn_detect(mtcnn, image, args.max_side)
        keep = probs >= args.min_probability
        boxes, probs = boxes[keep], probs[keep]
        seconds["mtcnn"] += time.perf_counter() - t
        t = time.perf_counter()
        enhanced = clahe_unsharp(image, **ENHANCE)
        seconds["enhance"] += time.perf_counter() - t
        t = time.perf_counter()
        grey = {"raw": cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), "enhanced": cv2.cvtColor(enhanced, cv2.COLOR_RGB2GRAY)}
        hog_found = {k: dlib_detect(hog, g, 1, args.max_side) for k, g in grey.items()}
        seconds["dlib_detector"] += (time.perf_counter() - t) / 2  # per image version
        targets = [points_box(gt) for _, gt in faces]

        # one face per photo: is the chosen face an annotated one?
        if len(boxes):
            photos_with_face += 1
            for policy in policy_wrong:
                chosen = boxes[select_faces(boxes, probs, image.shape[1], image.shape[0], policy)[0]]
                hit = any(iou(chosen, tb) >= MATCH_IOU for tb in targets)
                policy_found[policy] += hit
                policy_wrong[policy] += not hit
        # every face kept: each annotated face takes its best-overlapping MTCNN face; a face claimed by two
        # annotated faces would be a wrong face for one of them
        claimed = [match(list(boxes), tb) for tb in targets]
        all_faces_wrong += len([c for c in claimed if c is not None]) - len({c for c in claimed if c is not None})

        for (name, gt), target, m in zip(faces, targets, claimed):
            r = match(hog_found["raw"], target)  # the reference: dlib's detector and predictor alone
            if r is not None:
                t = time.perf_counter()
                reference[name] = nme(dlib_points(predictor, grey["raw"], hog_found["raw"][r]), gt)
                seconds["dlib_predictor"] += time.perf_counter() - t
            if m is None:
                continue
            mtcnn_found += 1
            for variant, image_kind, source, fallback in VARIANTS:
                box, used = predictor_box(boxes[m], hog_found[image_kind], source, fallback, mapping)
                box_sources[variant][used] += 1
                variant_errors[variant][name] = nme(dlib_points(predictor, grey[image_kind], box), gt)
        print(f"{photo}: {len(faces)} annotated, {len(boxes)} MTCNN, {len(hog_found['raw'])} dlib", flush=True)

    # faces both find: the pipeline default compared with the reference on the same faces
    default = "raw_refine_mapped_fallback"
    photos = len(afw)
    ref = summarize(list(reference.values()), n_faces)
    variants = {}
    for name, errs in variant_errors.items():
        both = sorted(set(errs) & set(reference))
        variants[name] = {**summarize(list(errs.values()), n_faces), "box_source": dict(box_sources[name]),
                          "faces_both_find": len(both),
                          "nme_mean_on_faces_both_find": float(np.mean([errs[f] for f in both])) if both else None,
                          "dlib_reference_nme_on_faces_both_find": float(np.mean([reference[f] for f in both])) if both else None}
    results = {
        "benchmark": "68-point landmark stage on 300-W AFW (human annotations), NME by outer-eye-corner distance",
        "photos": photos, "annotated_faces": n_faces, "max_side": args.max_side, "min_probability": args.min_probability,
        "match_iou": MATCH_IOU, "failure_nme": FAILURE_NME,
        "box_mapping_fit": fit,
        "dlib_reference": ref,
        "mtcnn_detection_rate": mtcnn_found / n_faces,
        "variants": variants,
        "pipeline_variant": default,
        "pipeline_nme": variants[default]["nme_mean"],
        "pipeline_nme_median": variants[default]["nme_median"],
        "pipeline_failure_rate": variants[default]["failure_rate_annotated"],
        "dlib_reference_nme": ref["nme_mean"],
        "detection_rate": variants[default]["detection_rate"],
        "selection_policies": {p: {"wrong_face_rate": policy_wrong[p] / max(1, photos_with_face), "wrong_faces": policy_wrong[p],
                                   "photos_with_a_face": photos_with_face} for p in policy_wrong},
        "wrong_face_rate": all_faces_wrong / max(1, n_faces),
        "wrong_faces_all_kept": all_faces_wrong,
        "seconds_per_photo": {k: v / photos for k, v in seconds.items()},
        "machine": machine(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ced_plot({"dlib reference (HOG + predictor)": list(reference.values()), **{k: list(v.values()) for k, v in variant_errors.items()}},
             n_faces, args.plot)
    results["plot"] = str(args.plot.relative_to(ROOT)) if args.plot.is_relative_to(ROOT) else str(args.plot)
    save_results(args.results, results)
    print(json.dumps({k: results[k] for k in ("pipeline_nme", "pipeline_failure_rate", "dlib_reference_nme", "detection_rate",
                                              "wrong_face_rate")}, indent=1))


if __name__ == "__main__":
    main()
