"""The face pipeline's 68-point landmark stage measured on human annotations, through the project's own stages
(studykit.preprocessing: MTCNN, face matching, box mapping, landmarks on the raw photo):

- `helen` (the headline): 300-W's HELEN test part, 230 faces in whole photos (../shared/data/face_landmarks_68/
  helen_test_300w) - faces dlib's 68-point model never saw;
- `afw`: 300-W's AFW, 337 faces in 185 photos, many in profile - part of dlib's training data.

NME = mean point-to-point error / distance between the outer eye corners (points 37 and 46, 1-based); failure =
NME > 0.08 (0.10 also reported). An annotated face is *found* by a detector when one of its faces overlaps the box
of the annotated points with IoU >= 0.3 (the best-overlapping face is used). Back ends compared on each face:

- `dlib_reference`: dlib's HOG detector + dlib's predictor, from dlib's own box (what the predictor was trained with);
- pipeline variants with dlib's predictor, all on MTCNN's faces: the image the predictor runs on (raw / enhanced) x
  the box it starts from (dlib's detection overlapping the MTCNN box with a fallback, the fitted mapping, the raw
  MTCNN box); `raw_refine_mapped_fallback` is the configured stage;
- with `--run <face68 run>` (experiment=face68_helen): the trained run as the landmark stage (backend=run) from the
  MTCNN box, and the run from the annotation's box (the 300-W protocol), with seconds per face.

The MTCNN -> dlib box mapping is fitted on JAFFE (213 photos, faces where both detectors agree); the MTCNN ->
annotated-points box mapping of the run back end on HELEN's training crops (helen_train_crops), never on a test set.

    python benchmarks/face_landmarks.py --run <face68 run>       # both sets -> benchmarks/results/face_landmarks.json
    python benchmarks/face_landmarks.py --sets helen --limit 10 --results /tmp/fl.json
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

from common import DATA_ROOT, ROOT, load_results, machine, save_results, script_provenance
from studykit.data.images import points_square, read_rgb
from studykit.preprocessing.detection import FACE_SELECTION, mtcnn_detect, select_faces
from studykit.preprocessing.dlib68 import dlib_detect, dlib_points, fit_box_mapping, iou, predictor_box, predictor_path
from studykit.preprocessing.faces import clahe_unsharp

RESULTS = ROOT / "benchmarks" / "results" / "face_landmarks.json"
PLOT = ROOT / "benchmarks" / "results" / "face_landmarks_ced.png"
SETS = {"helen": "helen_test_300w", "afw": "afw_300w"}
MATCH_IOU = 0.3
FAILURE_NME = 0.08
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
PIPELINE = "raw_refine_mapped_fallback"


def read_faces(folder: Path, limit: int | None) -> dict[str, list[tuple[str, np.ndarray]]]:
    """photo -> [(face name, (68, 2) 0-based points)], from <photo>_<k>.pts (1-based x y lines). Faces whose .jpg
    files are byte-identical are one photo (AFW repeats a photo under each face's name; HELEN's <id>_1 and <id>_2
    may be different photos)."""
    import hashlib

    photos: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for pts in sorted(folder.glob("*.pts")):
        values = np.asarray(pts.read_text().split(), dtype=np.float64)
        if values.size != 136:
            raise ValueError(f"{pts}: expected 68 'x y' lines, got {values.size} numbers")
        digest = hashlib.sha256(pts.with_suffix(".jpg").read_bytes()).hexdigest()[:12]
        photos[f"{pts.stem.rsplit('_', 1)[0]}-{digest}"].append((pts.stem, values.reshape(68, 2) - 1.0))
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


def fit_run_mapping(mtcnn, crops: Path, limit: int | None) -> dict:
    """MTCNN box -> the annotated points' box, from HELEN's training crops (the run's own training faces)."""
    pairs_m, pairs_p = [], []
    faces = read_faces(crops, limit)
    for photo in faces.values():
        for name, gt in photo:
            image = read_rgb(crops / f"{name}.jpg")
            boxes, _ = mtcnn_detect(mtcnn, image)
            m = match(list(boxes), points_box(gt))
            if m is not None:
                pairs_m.append(boxes[m]), pairs_p.append(points_box(gt))
    mapping = fit_box_mapping(np.array(pairs_m), np.array(pairs_p))
    return {"mapping": {k: round(v, 4) for k, v in mapping.items()}, "fitted_on": f"helen_train_crops ({crops})",
            "faces": sum(len(v) for v in faces.values()), "pairs": len(pairs_m),
            "rule": "MTCNN face overlapping the annotated points' box (IoU >= 0.3); median of centre shift / size ratio"}


def summarize(errors: list[float], n_faces: int) -> dict:
    e = np.array(errors)
    out = {"found": int(len(e)), "detection_rate": len(e) / n_faces,
           "nme_mean": float(e.mean()) if len(e) else None, "nme_median": float(np.median(e)) if len(e) else None}
    for threshold, tag in ((FAILURE_NME, ""), (0.10, "_010")):
        fails = int((e > threshold).sum())
        out[f"failures{tag}"] = fails
        out[f"failure_rate_annotated{tag}"] = fails / n_faces
    return out


def ced_plot(curves: dict[str, list[float]], n_faces: int, path: Path, title: str) -> None:
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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)



def measure(folder: Path, faces_by_photo: dict, mtcnn, hog, predictor, mapping: dict, run_model, args) -> dict:
    """Every back end on every annotated face of one set; NME per face per back end, and timings."""
    n_faces = sum(len(v) for v in faces_by_photo.values())
    seconds = defaultdict(float)
    counts = defaultdict(int)
    reference: dict[str, float] = {}
    errors: dict[str, dict[str, float]] = {v[0]: {} for v in VARIANTS}
    if run_model is not None:
        errors.update({"run_from_mtcnn_box": {}, "run_from_annotation_box": {}})
    box_sources: dict[str, dict[str, int]] = {v[0]: defaultdict(int) for v in VARIANTS}
    policy_wrong = {p: 0 for p in FACE_SELECTION if p != "all"}
    photos_with_face, all_faces_wrong, mtcnn_found = 0, 0, 0
    for photo, faces in faces_by_photo.items():
        t = time.perf_counter()
        image = read_rgb(folder / f"{faces[0][0]}.jpg")
        seconds["read"] += time.perf_counter() - t
        t = time.perf_counter()
        boxes, probs = mtcnn_detect(mtcnn, image, args.max_side)
        keep = probs >= args.min_probability
        boxes, probs = boxes[keep], probs[keep]
        seconds["mtcnn"] += time.perf_counter() - t
        enhanced = clahe_unsharp(image, **ENHANCE)
        grey = {"raw": cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), "enhanced": cv2.cvtColor(enhanced, cv2.COLOR_RGB2GRAY)}
        t = time.perf_counter()
        hog_found = {k: dlib_detect(hog, g, 1, args.max_side) for k, g in grey.items()}
        seconds["dlib_detector"] += (time.perf_counter() - t) / 2  # per image version
        targets = [points_box(gt) for _, gt in faces]
        if len(boxes):  # one face per photo: is the chosen face an annotated one?
            photos_with_face += 1
            for policy in policy_wrong:
                chosen = boxes[select_faces(boxes, probs, image.shape[1], image.shape[0], policy)[0]]
                policy_wrong[policy] += not any(iou(chosen, tb) >= MATCH_IOU for tb in targets)
        # every face kept: each annotated face takes its best-overlapping MTCNN face; one claimed twice is a wrong face
        claimed = [match(list(boxes), tb) for tb in targets]
        all_faces_wrong += len([c for c in claimed if c is not None]) - len({c for c in claimed if c is not None})
        for (name, gt), target, m in zip(faces, targets, claimed):
            r = match(hog_found["raw"], target)
            if r is not None:
                t = time.perf_counter()
                reference[name] = nme(dlib_points(predictor, grey["raw"], hog_found["raw"][r]), gt)
                seconds["dlib_predictor"] += time.perf_counter() - t
                counts["dlib_predictor"] += 1
            if run_model is not None:
                t = time.perf_counter()
                errors["run_from_annotation_box"][name] = nme(run_model.predict_square(grey["raw"], points_square(gt, run_model.scale)), gt)
                seconds["run_one_pass"] += time.perf_counter() - t
                counts["run_one_pass"] += 1
            if m is None:
                continue
            mtcnn_found += 1
            for variant, image_kind, source, fallback in VARIANTS:
                box, used = predictor_box(boxes[m], hog_found[image_kind], source, fallback, mapping)
                box_sources[variant][used] += 1
                errors[variant][name] = nme(dlib_points(predictor, grey[image_kind], box), gt)
            if run_model is not None:
                t = time.perf_counter()
                errors["run_from_mtcnn_box"][name] = nme(run_model.points(grey["raw"], boxes[m]), gt)
                seconds["run_backend"] += time.perf_counter() - t
                counts["run_backend"] += 1
        print(f"{photo}: {len(faces)} annotated, {len(boxes)} MTCNN, {len(hog_found['raw'])} dlib", flush=True)

    ref = summarize(list(reference.values()), n_faces)
    backends = {}
    for name, errs in errors.items():
        both = sorted(set(errs) & set(reference))
        backends[name] = {**summarize(list(errs.values()), n_faces), "faces_both_find": len(both),
                          "nme_mean_on_faces_both_find": float(np.mean([errs[f] for f in both])) if both else None,
                          "dlib_reference_nme_on_faces_both_find": float(np.mean([reference[f] for f in both])) if both else None}
        if name in box_sources:
            backends[name]["box_source"] = dict(box_sources[name])
    all_names = [n for faces in faces_by_photo.values() for n, _ in faces]
    # the faces dlib alone gets wrong: its detector misses them or its points fail
    dlib_fails = [n for n in all_names if n not in reference or reference[n] > FAILURE_NME]
    where_dlib_fails = {name: summarize([errs[f] for f in dlib_fails if f in errs], max(1, len(dlib_fails)))
                        for name, errs in errors.items() if name.startswith("run_") or name == PIPELINE}
    out = {"folder": str(folder), "photos": len(faces_by_photo), "annotated_faces": n_faces,
           "mtcnn_detection_rate": mtcnn_found / n_faces, "dlib_reference": ref, "backends": backends,
           "pipeline_variant": PIPELINE, "pipeline": backends[PIPELINE],
           "pipeline_vs_dlib_reference": backends[PIPELINE]["nme_mean"] / ref["nme_mean"] if ref["nme_mean"] else None,
           "faces_dlib_fails": {"count": len(dlib_fails), "rule": f"dlib's detector misses the face or its NME > {FAILURE_NME}",
                                "backends": where_dlib_fails},
           "selection_policies": {p: {"wrong_face_rate": policy_wrong[p] / max(1, photos_with_face), "wrong_faces": policy_wrong[p],
                                      "photos_with_a_face": photos_with_face} for p in policy_wrong},
           "wrong_faces_all_kept": all_faces_wrong,
           "seconds_per_photo": {k: v / max(1, len(faces_by_photo)) for k, v in seconds.items() if k in ("read", "mtcnn", "dlib_detector")},
           "seconds_per_face": {k: seconds[k] / counts[k] for k in counts}}
    curves = {"dlib reference (HOG + predictor)": list(reference.values()), **{k: list(v.values()) for k, v in errors.items()}}
    return out, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path(DATA_ROOT))
    parser.add_argument("--sets", default="helen,afw", help=f"comma-separated, of {list(SETS)}")
    parser.add_argument("--run", type=Path, default=None, help="a trained 68-point run (experiment=face68_helen) as a second back end")
    parser.add_argument("--limit", type=int, default=None, help="first N photos of each set only")
    parser.add_argument("--max-side", type=int, default=None, help="detectors run on the photo shrunk to this long side")
    parser.add_argument("--min-probability", type=float, default=0.9)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    import dlib
    import torch
    from facenet_pytorch import MTCNN

    data_root = args.data_root.resolve()
    faces_root = data_root / "face_landmarks_68"
    mtcnn = MTCNN(keep_all=True, min_face_size=20, device="cpu")
    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(predictor_path(None)))
    fit = fit_on_jaffe(mtcnn, hog, data_root / "jaffe" / "jaffe_db")
    print("box mapping", fit, flush=True)
    results = load_results(args.results, {})
    if "sets" not in results:  # the per-set entries of earlier runs are kept: a run of one set replaces that set's entry
        results = {"sets": {}}
    results.update({"benchmark": "68-point landmark stage on human annotations (300-W), NME by outer-eye-corner distance",
                    "match_iou": MATCH_IOU, "failure_nme": FAILURE_NME, "box_mapping_fit": fit})
    run_model = None
    if args.run:
        from studykit.preprocessing.landmark_run import RunLandmarks

        run_fit = fit_run_mapping(mtcnn, faces_root / "helen_train_crops", args.limit)
        print("run box mapping", run_fit, flush=True)
        run_model = RunLandmarks(args.run, run_fit["mapping"], passes=2)
        tested = args.run / "test_report.json"
        report = json.loads(tested.read_text()) if tested.is_file() else {}
        summary = args.run / "train_summary.json"
        stages = json.loads(summary.read_text())["stages"] if summary.is_file() else {}
        results["run"] = {"run_dir": str(args.run), "box_mapping_fit": run_fit, "passes": 2,
                          "test_report_nme": report.get("nme"), "torch_threads": torch.get_num_threads(),
                          "train_minutes": sum(v["seconds"] for v in stages.values()) / 60 if stages else None,
                          "train_epochs": sum(v["epochs_run"] for v in stages.values()) if stages else None}
    for name in args.sets.split(","):
        folder = faces_root / SETS[name]
        out, curves = measure(folder, read_faces(folder, args.limit), mtcnn, hog, predictor, fit["mapping"], run_model, args)
        # one entry per set and MTCNN threshold (the pipeline's configured 0.9, or what --min-probability says)
        key = name if args.min_probability == 0.9 else f"{name}@{args.min_probability}"
        results["sets"][key] = out = {**out, "min_probability": args.min_probability, "max_side": args.max_side,
                                      "run": results.get("run") if run_model is not None else None, **script_provenance(),
                                      "machine": machine()}
        plot = PLOT.with_name(f"face_landmarks_ced_{key}.png")
        title = {"helen": "HELEN test (300-W), faces dlib never saw", "afw": "AFW (300-W), part of dlib's training data"}[name]
        ced_plot(curves, out["annotated_faces"], plot, f"{title}: cumulative NME")
        out["plot"] = str(plot.relative_to(ROOT)) if plot.is_relative_to(ROOT) else str(plot)
        print(name, json.dumps({k: out[k] for k in ("pipeline_vs_dlib_reference", "mtcnn_detection_rate")}), flush=True)
    helen_keys = [k for k in results["sets"] if k.split("@")[0] == "helen"]
    if helen_keys:  # the headline: HELEN at the threshold that finds the most faces (then the configured one)
        key = max(helen_keys, key=lambda k: (results["sets"][k]["pipeline"]["found"], k == "helen"))
        helen = results["sets"][key]
        results.update({"headline_set": key, "pipeline_nme": helen["pipeline"]["nme_mean"],
                        "dlib_reference_nme": helen["dlib_reference"]["nme_mean"],
                        "pipeline_vs_dlib_reference": helen["pipeline_vs_dlib_reference"],
                        "detection_rate": helen["pipeline"]["detection_rate"], "wrong_faces": helen["wrong_faces_all_kept"]})
    results.update({"machine": machine(), **script_provenance(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    save_results(args.results, results)
    print(json.dumps({k: results.get(k) for k in ("pipeline_nme", "dlib_reference_nme", "pipeline_vs_dlib_reference", "detection_rate")}, indent=1))


if __name__ == "__main__":
    main()
